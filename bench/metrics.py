"""Dashboard cost: the metric catalog (pushed down) against pulling the table into pandas.

For each size, seeds a DuckDB file, then measures in separate processes:
- catalog: `tools.metrics.dashboard` (the KPIs, financial metrics and distributions, two
  queries in the warehouse);
- pandas: the seed app's way, `SELECT *` into a DataFrame, then means and value counts for
  the same numbers.
Each process reports its wall time for the work and its peak resident memory (VmHWM). Prints the
speed-up and both peaks; the catalog's peak should not grow with rows.

    .venv/bin/python bench/metrics.py [--rows 1000000 10000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from children import PEAK, ROOT, run_child  # noqa: E402

CATALOG_CHILD = (
    PEAK
    + """
import json, sys, time
from tools.metrics import dashboard
from tools.warehouse import DuckDBWarehouse
# Keeping no results: each repetition queries the table.
wh = DuckDBWarehouse(sys.argv[1], memory_limit=sys.argv[3], result_cache=0)
base = peak_kb()
best = float("inf")
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    ev = dashboard(wh)
    best = min(best, time.perf_counter() - t)
peak = peak_kb()
print(json.dumps({"seconds": best, "peak_kb": peak, "base_kb": base,
                  "records": ev["kpis"].rows[0]["records"]}))
"""
)

PANDAS_CHILD = (
    PEAK
    + """
import json, sys, time
import duckdb, numpy as np
con = duckdb.connect(sys.argv[1], read_only=True)
base = peak_kb()
t = time.perf_counter()
df = con.execute("SELECT * FROM fpr_records").df()
kpis = {
    "records": len(df),
    "avg_recommendation_score": df.recommendation_score.mean(),
    "avg_satisfaction_score": df.customer_satisfaction_score.mean(),
    "avg_churn_probability": df.customer_churn_probability.mean(),
    "total_product_sales": df.product_sales_amount.sum(),
    "acceptance_rate": (df.product_recommendation_status == "Accepted").mean(),
    "avg_transaction_value": df.customer_transaction_value.mean(),
    "avg_account_balance": df.account_balance.mean(),
    "avg_transaction_count": df.customer_transaction_count.mean(),
    "total_transaction_count": df.customer_transaction_count.sum(),
}
bands = np.digitize(df.customer_product_affinity, [0.25, 0.5, 0.75])
dists = {
    "status": df.product_recommendation_status.value_counts(),
    "affinity": df.groupby(bands).size(),
    "stage": df.customer_lifecycle_stage.value_counts(),
    "product": df.product_type.value_counts().head(10),
    "segment": df.customer_segment.value_counts().head(10),
    "sales": df.groupby("product_recommendation_status").product_sales_amount.sum(),
}
seconds = time.perf_counter() - t
peak = peak_kb()
print(json.dumps({"seconds": seconds, "peak_kb": peak, "base_kb": base,
                  "records": int(kpis["records"])}))
"""
)


def main() -> None:
    """Run the comparison for each size and print the figures."""
    sys.path.insert(0, str(ROOT))
    from tools.ingest import seed_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="catalog runs; the best counts")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="finmatch-bench-") as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"fpr_{rows}.duckdb"
            t = time.perf_counter()
            seed_table(path, rows=rows)
            seeded = time.perf_counter() - t
            print(f"[{rows:>12,} rows] seeded in {seeded:.1f} s; measuring ...", flush=True)
            cat = run_child(CATALOG_CHILD, str(path), str(args.repeat), "1GB")
            small = run_child(CATALOG_CHILD, str(path), str(args.repeat), "256MB")
            pdx = run_child(PANDAS_CHILD, str(path))
            assert cat["records"] == small["records"] == pdx["records"] == rows
            results.append((rows, seeded, cat, small, pdx))
            path.unlink()

    print()
    header = (
        f"{'rows':>12}  {'seed s':>7}  {'catalog s':>9}  {'pandas s':>9}  {'speed-up':>8}  "
        f"{'catalog peak MB':>15}  {'at 256MB limit':>14}  {'pandas peak MB':>14}"
    )
    print(header)
    print("-" * len(header))
    for rows, seeded, cat, small, pdx in results:
        print(
            f"{rows:>12,}  {seeded:>7.1f}  {cat['seconds']:>9.3f}  {pdx['seconds']:>9.2f}  "
            f"{pdx['seconds'] / cat['seconds']:>7.1f}x  {cat['peak_kb'] / 1024:>15.0f}  "
            f"{small['peak_kb'] / 1024:>8.0f} ({small['seconds']:.2f} s)  "
            f"{pdx['peak_kb'] / 1024:>8.0f}"
        )
    print(
        "\nPeak memory is each process's own high-water mark (VmHWM). The catalog runs at the "
        "default FINMATCH_DUCKDB_MEMORY_LIMIT (1GB) and again at 256MB. Its peak is the "
        f"process itself ({results[0][2]['base_kb'] / 1024:.0f} MB after imports and opening "
        "the warehouse) plus DuckDB's block cache, which stops at the limit whatever the "
        "table size; the pandas way holds the whole table."
    )


if __name__ == "__main__":
    main()
