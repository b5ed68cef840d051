"""Four-area offline run against one full-table aggregate scan, per table size.

For each size, seeds a DuckDB file, then measures in two processes with the same imports
(so their memory bases match):
- scan: one aggregate query reading every column the agents read (count, sums of the
  numeric columns, min/max of the categorical ones), best of three;
- agents: the portfolio graph (the four focus areas offline plus the executive summary,
  no checkpointer or tracing), after one warm-up scan; best of three runs, like the scan
  (the first run, with the process's caches cold, is printed beside it). The warehouse
  keeps no results here, so each run queries the table.
Prints wall times and their ratio (target: at most 3x at 10 M rows), each process's peak
resident memory (VmHWM) and their ratio (target: at most 2x), and the prompt size a model
would get per area, which should not grow with the table.

    .venv/bin/python bench/agents.py [--rows 750 1000000 10000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import PEAK, ROOT, run_child  # noqa: E402

COMMON = (
    PEAK
    + """
import asyncio, json, sys, time
from graphs.context import Context
from graphs.portfolio import graph
from graphs.resources import warehouse_for


NUMERIC = ["recommendation_score", "customer_satisfaction_score", "customer_churn_probability",
    "product_sales_amount", "customer_transaction_value", "account_balance",
    "customer_transaction_count", "customer_product_affinity", "last_updated_epoch"]
CATEGORICAL = ["customer_id", "customer_segment", "customer_lifecycle_stage", "product_type",
    "product_recommendation_status", "product_recommendation_date"]
SCAN = ("SELECT count(*) AS n, " + ", ".join(f"sum({c}) AS s_{c}" for c in NUMERIC) + ", "
    + ", ".join(f"min({c}) AS lo_{c}, max({c}) AS hi_{c}" for c in CATEGORICAL)
    + " FROM fpr_records")
url = "duckdb:///" + sys.argv[1]
wh = warehouse_for(url)
wh.results = None  # every run queries: the work measured, not the results kept from the last
base = peak_kb()

def scan():
    t = time.perf_counter()
    rows = wh.run(SCAN)
    return time.perf_counter() - t, rows
"""
)

SCAN_CHILD = (
    COMMON
    + """
best = min(scan()[0] for _ in range(3))
print(json.dumps({"seconds": best, "peak_kb": peak_kb(), "base_kb": base}))
"""
)

AGENTS_CHILD = (
    COMMON
    + """
scan()
runs = []
for _ in range(3):
    t = time.perf_counter()
    out = asyncio.run(graph.ainvoke({"question": ""}, context=Context(warehouse=url)))
    runs.append(time.perf_counter() - t)
tokens = {s: r["usage"]["prompt_tokens_estimate"] for s, r in out["reports"].items()}
steps = {s["step"]: s["detail"] for s in out["steps"] if s["focus_area"] == "portfolio"}
print(json.dumps({"seconds": min(runs), "first": runs[0], "peak_kb": peak_kb(),
                  "base_kb": base, "tokens": tokens,
                  "shared": steps.get("Portfolio Data Preparation", "")}))
"""
)


def main() -> None:
    """Measure each size and print the figures."""
    sys.path.insert(0, str(ROOT))
    from tools.ingest import seed_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[750, 1_000_000, 10_000_000])
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="finmatch-bench-") as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"fpr_{rows}.duckdb"
            t = time.perf_counter()
            seed_table(path, rows=rows)
            print(
                f"[{rows:>12,} rows] seeded in {time.perf_counter() - t:.1f} s; measuring ...",
                flush=True,
            )
            scan = run_child(SCAN_CHILD, str(path))
            agents = run_child(AGENTS_CHILD, str(path))
            print(f"    {agents['shared']}", flush=True)
            results.append((rows, scan, agents))
            path.unlink()

    print()
    header = (
        f"{'rows':>12}  {'scan s':>7}  {'agents s':>8}  {'first s':>7}  {'x scan':>6}  "
        f"{'scan MB':>7}  {'agents MB':>9}  {'x scan':>6}  "
        f"{'prompt tokens (min-max over areas)':>34}"
    )
    print(header)
    print("-" * len(header))
    for rows, scan, agents in results:
        tokens = agents["tokens"].values()
        print(
            f"{rows:>12,}  {scan['seconds']:>7.3f}  {agents['seconds']:>8.2f}  "
            f"{agents['first']:>7.2f}  "
            f"{agents['seconds'] / scan['seconds']:>5.1f}x  {scan['peak_kb'] / 1024:>7.0f}  "
            f"{agents['peak_kb'] / 1024:>9.0f}  {agents['peak_kb'] / scan['peak_kb']:>5.2f}x  "
            f"{min(tokens):>,} - {max(tokens):>,}".rjust(34)
        )
    print(
        "\nTargets: agents at most 3x the scan at 10 M rows; peak at most 2x the scan's; "
        "prompt size flat across sizes. Both processes import the same modules "
        f"(base {results[0][1]['base_kb'] / 1024:.0f} MB after imports and opening the "
        "warehouse); peaks are each process's own VmHWM."
    )


if __name__ == "__main__":
    main()
