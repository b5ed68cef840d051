from pathlib import Path

import pytest

from tools.guard import GuardRejection, check, run_sql
from tools.warehouse import DuckDBWarehouse, QueryTimeout, WarehouseError

ATTACKS = {
    # DDL / DML
    "DROP TABLE fpr_records": "only queries may run",
    "DELETE FROM fpr_records": "only queries may run",
    "UPDATE fpr_records SET account_balance = 0": "only queries may run",
    "INSERT INTO fpr_records SELECT * FROM fpr_records": "only queries may run",
    "CREATE TABLE x AS SELECT * FROM fpr_records": "only queries may run",
    "ALTER TABLE fpr_records RENAME TO x": "only queries may run",
    "SELECT * INTO copy_of FROM fpr_records": "INTO is not allowed",
    # several statements, and comment tricks around them
    "SELECT 1; DROP TABLE fpr_records": "exactly one statement",
    "SELECT 1;/* hidden */DELETE FROM fpr_records": "exactly one statement",
    "SELECT 1 --\n; DROP TABLE fpr_records": "exactly one statement",
    "/* SELECT */ DROP TABLE fpr_records": "only queries may run",
    "SELECT 1; SELECT 2": "exactly one statement",
    # files and table functions
    "SELECT * FROM read_csv('/etc/passwd')": "table functions are not allowed (read_csv)",
    "SELECT * FROM read_csv_auto('/etc/passwd')": "table functions are not allowed",
    "SELECT * FROM read_parquet('x.parquet')": "table functions are not allowed (read_parquet)",
    "SELECT * FROM read_json('x.json')": "table functions are not allowed",
    "SELECT * FROM read_text('/etc/passwd')": "table functions are not allowed",
    "SELECT * FROM glob('/*')": "table functions are not allowed (glob)",
    "SELECT * FROM query('SELECT 1')": "table functions are not allowed (query)",
    "SELECT * FROM query_table('fpr_records')": "table functions are not allowed",
    "SELECT * FROM range(10)": "table functions are not allowed",
    "SELECT * FROM generate_series(1, 10)": "table functions are not allowed",
    "SELECT * FROM '/etc/passwd'": "only fpr_records may be queried",
    "SELECT * FROM 'data.csv'": "only fpr_records may be queried",
    "SELECT * FROM fpr_records, LATERAL (SELECT * FROM read_csv('x'))": "table functions",
    "SELECT * FROM fpr_records UNION ALL SELECT * FROM read_parquet('x')": "table functions",
    # copy, attach, extensions, pragmas, settings
    "COPY fpr_records TO '/tmp/out.csv'": "only queries may run",
    "COPY (SELECT * FROM fpr_records) TO '/tmp/out.csv'": "only queries may run",
    "EXPORT DATABASE '/tmp/db'": "could not be parsed",
    "ATTACH '/tmp/other.db' AS other": "only queries may run",
    "DETACH other": "only queries may run",
    "INSTALL httpfs": "only queries may run",
    "LOAD httpfs": "only queries may run",
    "PRAGMA table_info('fpr_records')": "only queries may run",
    "SET threads = 1": "only queries may run",
    "RESET threads": "only queries may run",
    "USE other": "only queries may run",
    "CALL pragma_version()": "only queries may run",
    "CHECKPOINT": "only queries may run",
    # system catalogs and introspection
    "SELECT * FROM information_schema.tables": "only fpr_records may be queried",
    "SELECT * FROM duckdb_tables()": "table functions are not allowed (duckdb_tables)",
    "SELECT * FROM duckdb_settings()": "table functions are not allowed",
    "SELECT * FROM pragma_table_info('fpr_records')": "table functions are not allowed",
    "SELECT * FROM sqlite_master": "only fpr_records may be queried",
    "SELECT * FROM pg_catalog.pg_tables": "only fpr_records may be queried",
    "SELECT current_setting('threads')": "function current_setting() is not allowed",
    "SELECT getenv('HOME')": "function getenv() is not allowed",
    "SELECT version()": "is not allowed",
    # other tables and columns
    "SELECT * FROM customers": "only fpr_records may be queried, not customers",
    "SELECT * FROM main.fpr_records": "only fpr_records may be queried",
    "SELECT * FROM other_db.main.fpr_records": "only fpr_records may be queried",
    "SELECT password FROM fpr_records": "unknown column",
    "SELECT _fivetran_deleted FROM fpr_records": "unknown column",
    # CTEs hiding any of these
    "WITH x AS (DELETE FROM fpr_records RETURNING *) SELECT * FROM x": "DELETE is not allowed",
    "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x": "table functions",
    "WITH x AS (SELECT * FROM secrets) SELECT * FROM x": "only fpr_records may be queried",
    "WITH fpr_records AS (SELECT 1 AS a) SELECT * FROM fpr_records": "a CTE may not be named",
    "WITH x AS (SELECT getenv('HOME') AS h) SELECT h FROM x": "function getenv()",
    "SELECT (SELECT count(*) FROM information_schema.columns) FROM fpr_records": "only fpr_records",
    # odd inputs
    "": "the statement is empty",
    "   ;  ": "expected exactly one statement, found 0",
    "SELEC * FROM fpr_records": "could not be parsed",
    "SELECT * FROM fpr_records WHERE customer_id = $1": "parameters are not supported",
    "SELECT * FROM fpr_records WHERE customer_id = ?": "parameters are not supported",
}

GOOD = [
    "SELECT customer_segment, avg(account_balance) AS bal FROM fpr_records GROUP BY 1",
    "select count(*) from FPR_RECORDS",
    "FROM fpr_records SELECT count(*)",
    """WITH s AS (
         SELECT customer_segment, product_type,
                avg(CASE WHEN product_recommendation_status = 'Accepted' THEN 1 ELSE 0 END) AS acc
         FROM fpr_records GROUP BY ALL)
       SELECT *, rank() OVER (PARTITION BY customer_segment ORDER BY acc DESC) AS r
       FROM s QUALIFY r <= 2 ORDER BY customer_segment, r""",
    """SELECT date_trunc('month', product_recommendation_date) AS m,
              count(*) FILTER (WHERE product_recommendation_status = 'Declined') AS declined,
              round(sum(product_sales_amount), 2) AS sales,
              coalesce(max(product_sales_date), DATE '2000-01-01') AS last_sale
       FROM fpr_records
       WHERE product_recommendation_date BETWEEN DATE '2024-01-01' AND DATE '2025-12-31'
       GROUP BY 1 HAVING count(*) > 0 ORDER BY 1""",
    """SELECT a.customer_id, count(*) FROM fpr_records a JOIN fpr_records b
       ON a.customer_id = b.customer_id AND a.record_id <> b.record_id GROUP BY 1""",
    "SELECT corr(customer_satisfaction_score, customer_churn_probability) FROM fpr_records",
    """SELECT customer_segment,
              quantile_cont(account_balance, 0.5) AS median_balance,
              stddev_samp(account_balance) AS sd,
              lag(customer_segment) OVER (ORDER BY customer_segment) AS prev
       FROM fpr_records GROUP BY customer_segment""",
    "SELECT * FROM fpr_records WHERE customer_segment IN (SELECT 'Retail') LIMIT 3",
    "SELECT extract(year FROM product_sales_date) AS y, upper(product_type) FROM fpr_records",
    "SELECT 1 AS one UNION ALL SELECT 2",
]


@pytest.mark.parametrize(("sql", "reason"), ATTACKS.items())
def test_guard_rejects(sql: str, reason: str) -> None:
    with pytest.raises(GuardRejection) as info:
        check(sql)
    assert reason in info.value.reason
    assert "Only one SELECT over fpr_records" in str(info.value)


@pytest.mark.parametrize("sql", GOOD)
def test_guard_accepts_ordinary_analytics_and_it_runs(sql: str, warehouse: DuckDBWarehouse) -> None:
    ev = run_sql(warehouse, sql)
    assert ev.metric_id == "sql"
    assert ev.columns


def test_row_cap_truncates_and_flags(warehouse: DuckDBWarehouse) -> None:
    ev = run_sql(warehouse, "SELECT record_id FROM fpr_records", row_cap=10)
    assert ev.row_count == 10 and ev.truncated
    assert "LIMIT 11" in ev.sql
    small = run_sql(warehouse, "SELECT record_id FROM fpr_records LIMIT 5", row_cap=10)
    assert small.row_count == 5 and not small.truncated
    exact = run_sql(warehouse, "SELECT DISTINCT customer_segment FROM fpr_records", row_cap=5)
    assert exact.row_count == 5 and not exact.truncated
    larger = run_sql(warehouse, "SELECT record_id FROM fpr_records LIMIT 500", row_cap=10)
    assert larger.row_count == 10 and larger.truncated


def test_timeout_interrupts_a_runaway_query(warehouse: DuckDBWarehouse) -> None:
    runaway = (
        "SELECT count(*) FROM fpr_records a, fpr_records b, fpr_records c, fpr_records d "
        "WHERE a.account_balance + b.account_balance > c.account_balance - d.account_balance"
    )
    with pytest.raises(QueryTimeout, match="ran longer than 0.2 s"):
        run_sql(warehouse, runaway, timeout_s=0.2)
    # The connection stays usable afterwards.
    assert run_sql(warehouse, "SELECT count(*) AS n FROM fpr_records").rows == [{"n": 750}]


@pytest.mark.parametrize(
    "statement",
    [
        "COPY fpr_records TO '{tmp}/leak.csv'",
        "SELECT * FROM read_csv('{tmp}/x.csv')",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = true",
    ],
)
def test_the_connection_is_a_second_wall(
    statement: str, warehouse: DuckDBWarehouse, tmp_path: Path
) -> None:
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(WarehouseError):
        warehouse._execute(statement.format(tmp=tmp_path), {}, None, 5.0)
    assert not (tmp_path / "leak.csv").exists()
