"""A traced CLI run against an untraced one: `finmatch analyze --focus all`, end to end.

Seeds the 750-record table in a home of its own, then runs the command N times with
`--no-trace` and N times traced (the trace store already created by a first traced run,
as on any machine after its first), alternating, and prints the median and best wall
time of each and their ratio. Target: traced within 1.5x untraced.

    .venv/bin/python bench/tracing.py [--runs 5] [--focus all]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.ingest import seed_table  # noqa: E402

FINMATCH = Path(sys.executable).parent / "finmatch"


def timed(env: dict[str, str], focus: str, traced: bool) -> float:
    """Run the command once; return its wall time (it must succeed)."""
    command = [str(FINMATCH), "analyze", "--focus", focus, *([] if traced else ["--no-trace"])]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0 or (traced and "Trace:" not in done.stdout):
        raise SystemExit(f"the run failed:\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    """Seed, time both ways, print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--focus", default="all")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        seed_table(home / "fpr.duckdb")
        env = {**os.environ, "FINMATCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        first = timed(env, args.focus, traced=True)  # creates the store
        walls: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for traced in (False, True):
                walls[traced].append(timed(env, args.focus, traced))
        print(f"finmatch analyze --focus {args.focus}, {os.cpu_count()} cores, {args.runs} runs")
        print(f"first traced run (creates the store): {first:.2f} s")
        for traced, label in ((False, "untraced"), (True, "traced")):
            w = walls[traced]
            print(f"{label:9} median {statistics.median(w):.2f} s, best {min(w):.2f} s")
        ratio = statistics.median(walls[True]) / statistics.median(walls[False])
        print(f"traced / untraced (medians): {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
