"""The customer snapshot: each customer's latest state, kept beside `fpr_records`.

`fpr_records` holds one row per recommendation; a customer appears once per
recommendation, with the balance and churn probability recorded at that time. Analyses
that count each customer once (value at risk, median balances) need each customer's
latest record, which at 10 M rows is a GROUP BY over millions of customer ids and costs
twice a full scan of the table. The embedded warehouse therefore keeps that result as
the table `fpr_customers`, rebuilt in the same transaction that writes `fpr_records`
(seed, load), together with a fingerprint of the records it was built from.

A query uses the snapshot only when the fingerprint still matches the live records
(count, newest and sum of `last_updated_epoch`), so a table changed behind the snapshot's
back falls back to computing customers from the records; a backend without the snapshot
(Databricks) always does. Both paths run the same definition, `customers_sql`.

Latest means the record with the greatest `last_updated_epoch`; among records of one
customer updated in the same second, which one wins is not defined.
"""

from __future__ import annotations

from typing import Any

CUSTOMERS = "fpr_customers"
SOURCE = "fpr_customers_source"

# Each customer's latest segment and stage are carried through the per-customer GROUP BY
# as a small integer (the profile): arg_max over two strings costs as much again as the
# rest of the query.
_CUSTOMERS = """WITH profiles AS (
  SELECT seg, stage, row_number() OVER (ORDER BY seg, stage) AS profile
  FROM (
    SELECT DISTINCT customer_segment AS seg, customer_lifecycle_stage AS stage
    FROM {source} WHERE {where}
  ) AS d
), latest AS (
  SELECT customer_id,
    arg_max(p.profile, last_updated_epoch) AS profile,
    arg_max(account_balance, last_updated_epoch) AS account_balance,
    arg_max(customer_churn_probability, last_updated_epoch) AS customer_churn_probability,
    sum(product_sales_amount) AS product_sales_amount,
    count(*) AS records,
    max(last_updated_epoch) AS last_updated_epoch
  FROM {source} JOIN profiles AS p
    ON p.seg IS NOT DISTINCT FROM customer_segment
    AND p.stage IS NOT DISTINCT FROM customer_lifecycle_stage
  WHERE {where}
  GROUP BY customer_id
)
SELECT l.customer_id, p.seg AS customer_segment, p.stage AS customer_lifecycle_stage,
  l.account_balance, l.customer_churn_probability, l.product_sales_amount, l.records,
  l.last_updated_epoch
FROM latest AS l JOIN profiles AS p ON p.profile = l.profile"""

COLUMNS = (
    "customer_id",
    "customer_segment",
    "customer_lifecycle_stage",
    "account_balance",
    "customer_churn_probability",
    "product_sales_amount",
    "records",
    "last_updated_epoch",
)

FINGERPRINT_SQL = (
    "SELECT count(*) AS records, max(last_updated_epoch) AS newest, "
    "sum(last_updated_epoch) AS epoch_sum FROM fpr_records"
)


def customers_sql(where: str = "TRUE", source: str = "fpr_records") -> str:
    """Return the query of each customer's latest state among the records matching `where`.

    Columns: customer_id, customer_segment, customer_lifecycle_stage, account_balance,
    customer_churn_probability (all from the latest record), product_sales_amount (summed
    over the customer's records), records and last_updated_epoch (the latest).
    """
    return _CUSTOMERS.format(where=where, source=source)


def refresh(con: Any, source: str = "fpr_records") -> int:
    """Rebuild the snapshot from `source` on a DuckDB connection; return its customer count.

    Call it inside the transaction that changes the records, so the two never disagree.
    `source` is the live relation (rows deleted at the source already filtered out).
    """
    con.execute(f"CREATE OR REPLACE TABLE {CUSTOMERS} AS {customers_sql(source=source)}")
    fingerprint = FINGERPRINT_SQL.replace("FROM fpr_records", f"FROM {source}")
    con.execute(f"CREATE OR REPLACE TABLE {SOURCE} AS {fingerprint}")
    row = con.execute(f"SELECT count(*) FROM {CUSTOMERS}").fetchone()
    return int(row[0]) if row else 0
