"""The insight engine's scans against one full-table aggregate scan, per table size.

For each size, seeds a DuckDB file, then measures in two processes with the same imports:
- scan: one aggregate query reading every column (count, sums of the numeric columns,
  min/max of the text ones), best of three;
- engine: discovery, the GROUPING SETS statistics pass, the data-quality scan and the
  tests (`graphs.insights.find`), best of three, with the first (cold) run beside it.
Prints wall times, their ratio, each process's peak resident memory (VmHWM), the slices,
cells and insights found, and the time the tests take in Python.

    .venv/bin/python bench/insights.py [--rows 750 1000000 10000000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import PEAK, run_child, seeded  # noqa: E402

COMMON = (
    PEAK
    + """
import json, sys, time
from graphs.insights import find
from tools.scans import quality, scan
from tools.schema import COLUMNS
from tools.warehouse import DuckDBWarehouse

NUMERIC = [c.name for c in COLUMNS if c.type in ("double", "bigint")]
TEXT = [c.name for c in COLUMNS if c.type in ("string", "date")]
SCAN = ("SELECT count(*) AS n, " + ", ".join(f"sum({c}) AS s_{c}" for c in NUMERIC) + ", "
    + ", ".join(f"min({c}) AS lo_{c}, max({c}) AS hi_{c}" for c in TEXT) + " FROM fpr_records")
wh = DuckDBWarehouse(sys.argv[1], result_cache=0)
base = peak_kb()

def full_scan():
    t = time.perf_counter()
    wh.run(SCAN)
    return time.perf_counter() - t
"""
)

SCAN_CHILD = (
    COMMON
    + """
best = min(full_scan() for _ in range(3))
print(json.dumps({"seconds": best, "peak_kb": peak_kb(), "base_kb": base}))
"""
)

ENGINE_CHILD = (
    COMMON
    + """
runs, tests = [], []
for _ in range(3):
    t = time.perf_counter()
    found_scan = scan(wh)
    quality(wh)
    t_tests = time.perf_counter()
    found = find(found_scan)
    runs.append(time.perf_counter() - t)
    tests.append(time.perf_counter() - t_tests)
print(json.dumps({"seconds": min(runs), "first": runs[0], "tests": min(tests),
                  "peak_kb": peak_kb(), "slices": len(found_scan.slices),
                  "cells": len(found_scan.cells), "insights": len(found)}))
"""
)


def main() -> None:
    """Measure each size and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[750, 1_000_000, 10_000_000])
    args = parser.parse_args()
    results = [
        (rows, run_child(SCAN_CHILD, str(path)), run_child(ENGINE_CHILD, str(path)))
        for rows, path in seeded(args.rows)
    ]
    header = (
        f"{'rows':>12}  {'scan s':>7}  {'engine s':>8}  {'first s':>7}  {'x scan':>6}  "
        f"{'tests s':>7}  {'scan MB':>7}  {'engine MB':>9}  {'slices':>6}  {'cells':>6}  "
        f"{'insights':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for rows, s, e in results:
        print(
            f"{rows:>12,}  {s['seconds']:>7.3f}  {e['seconds']:>8.2f}  {e['first']:>7.2f}  "
            f"{e['seconds'] / s['seconds']:>5.1f}x  {e['tests']:>7.2f}  "
            f"{s['peak_kb'] / 1024:>7.0f}  {e['peak_kb'] / 1024:>9.0f}  {e['slices']:>6}  "
            f"{e['cells']:>6}  {e['insights']:>8}"
        )


if __name__ == "__main__":
    main()
