"""What the benchmarks share: child processes that report their own peak memory.

Each measurement runs in a fresh process so its peak resident memory (VmHWM) is its own:
ru_maxrss would carry over the parent's high-water mark across exec on Linux (the parent
has just written the table).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PEAK = """
def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")
"""


def run_child(code: str, *args: str) -> dict[str, Any]:
    """Run `code` in a new interpreter at the project root; return its last line as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seeded(sizes: Sequence[int]) -> Iterator[tuple[int, Path]]:
    """Seed a table of each size in a temporary directory in turn; yield (rows, path)."""
    sys.path.insert(0, str(ROOT))
    from tools.ingest import seed_table

    with tempfile.TemporaryDirectory(prefix="finmatch-bench-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"fpr_{rows}.duckdb"
            t = time.perf_counter()
            seed_table(path, rows=rows)
            print(f"[{rows:>12,} rows] seeded in {time.perf_counter() - t:.1f} s", flush=True)
            yield rows, path
            path.unlink()
