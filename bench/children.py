"""What the benchmarks share: child processes that report their own peak memory.

Each measurement runs in a fresh process so its peak resident memory (VmHWM) is its own:
ru_maxrss would carry over the parent's high-water mark across exec on Linux (the parent
has just written the table).
"""

from __future__ import annotations

import json
import subprocess
import sys
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
