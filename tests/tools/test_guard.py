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


# -- names resolve by scope: a CTE counts only where it is visible ----------------------
SCOPE_ATTACKS = {
    # defined in a nested query, used outside it
    "nested": "SELECT * FROM (WITH sqlite_master AS (SELECT 1 AS a) SELECT * FROM sqlite_master) x "
    "CROSS JOIN sqlite_master",
    # defined in one subquery, used in its sibling
    "sibling": "SELECT * FROM (WITH fpr_customers AS (SELECT 1 AS a) "
    "SELECT * FROM fpr_customers) x, (SELECT * FROM fpr_customers) y",
    # defined in an EXISTS, used in an IN beside it
    "sibling predicates": "SELECT * FROM fpr_records WHERE EXISTS (WITH fpr_sync AS (SELECT 1) "
    "SELECT * FROM fpr_sync) AND customer_id IN (SELECT customer_id FROM fpr_sync)",
    # a later CTE of the same WITH is not visible to an earlier one
    "forward": "WITH a AS (SELECT * FROM duckdb_tables), duckdb_tables AS (SELECT 1 AS x) "
    "SELECT * FROM a",
    # without RECURSIVE a CTE's body does not see its own name
    "self": "WITH duckdb_databases AS (SELECT * FROM duckdb_databases) "
    "SELECT * FROM duckdb_databases",
    # a recursive CTE inside a subquery is not visible outside it
    "recursive": "SELECT * FROM (WITH RECURSIVE fpr_customers_source AS (SELECT 1 AS n UNION ALL "
    "SELECT n + 1 FROM fpr_customers_source WHERE n < 3) SELECT * FROM fpr_customers_source) q, "
    "fpr_customers_source",
    # under RECURSIVE, a body that is no UNION reads the real object of its own name
    "recursive, no union": "WITH RECURSIVE fpr_customers AS (SELECT * FROM fpr_customers) "
    "SELECT * FROM fpr_customers LIMIT 3",
    # ... and so does the anchor of a UNION, and every term but the last
    "recursive anchor": "WITH RECURSIVE sqlite_master(a) AS (SELECT sql FROM sqlite_master "
    "UNION ALL SELECT 1) SELECT * FROM sqlite_master",
    "recursive middle term": "WITH RECURSIVE duckdb_tables(a) AS (SELECT 1 UNION ALL "
    "SELECT table_name FROM duckdb_tables UNION ALL SELECT 2) SELECT * FROM duckdb_tables",
    # identifiers fold case in ASCII only: the Kelvin sign is not a k to the warehouse
    "unicode fold": 'WITH "duc\u212adb_tables" AS (SELECT 1 AS a) SELECT * FROM duckdb_tables',
    # a scalar subquery in the select list
    "scalar": "SELECT (WITH sqlite_master AS (SELECT 1 AS a) SELECT count(*) FROM sqlite_master), "
    "(SELECT count(*) FROM sqlite_master) FROM fpr_records",
}

SCOPED_GOOD = [
    # shadowing: the inner s hides the outer s inside its query only
    """WITH s AS (SELECT customer_segment FROM fpr_records)
       SELECT (SELECT count(*) FROM (WITH s AS (SELECT 1 AS one) SELECT * FROM s) t) AS inner_n,
              count(*) AS outer_n FROM s""",
    # an outer CTE is visible in nested subqueries and in later siblings
    """WITH a AS (SELECT customer_id FROM fpr_records), b AS (SELECT * FROM a)
       SELECT count(*) FROM fpr_records WHERE customer_id IN (SELECT customer_id FROM b)""",
    # a recursive CTE sees itself
    """WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5)
       SELECT n, (SELECT count(*) FROM fpr_records) AS records FROM r""",
    # several anchor terms, the recursive one last
    """WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT 2 UNION ALL
         SELECT n + 1 FROM r WHERE n < 4) SELECT count(*) FROM r""",
    # case-insensitive, as the warehouse resolves names
    "WITH Monthly AS (SELECT count(*) AS n FROM fpr_records) SELECT n FROM MONTHLY",
]


@pytest.mark.parametrize("sql", SCOPE_ATTACKS.values(), ids=SCOPE_ATTACKS.keys())
def test_a_cte_name_counts_only_where_it_is_visible(sql: str, warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(GuardRejection, match="only fpr_records may be queried, not"):
        run_sql(warehouse, sql)


@pytest.mark.parametrize("sql", SCOPED_GOOD)
def test_ctes_used_where_visible_run(sql: str, warehouse: DuckDBWarehouse) -> None:
    assert run_sql(warehouse, sql).row_count >= 1


def test_the_model_tool_cannot_read_other_tables(warehouse: DuckDBWarehouse) -> None:
    from tools.agent_tools import build_tools

    tool = {t.name: t for t in build_tools(warehouse)}["run_guarded_sql"]
    text = tool.invoke({"sql": SCOPE_ATTACKS["nested"]})
    assert text.startswith("Error: Query rejected: only fpr_records may be queried")
    assert "CREATE TABLE" not in text


# -- resource limits ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT length(lpad('a', 2000000000, 'x'))", "lpad() pads to at most 1,000"),
        ("SELECT rpad(customer_name, 100000, '.') FROM fpr_records", "rpad() pads to at most"),
        ("SELECT lpad(customer_name, customer_transaction_count, '*') FROM fpr_records", "lpad()"),
        ("SELECT repeat('x', 2000000000)", "function repeat() is not allowed"),
        (
            "SELECT count(*) FROM fpr_records WHERE "
            + " OR ".join(f"account_balance = {i}" for i in range(10_000)),
            "the statement is 258,925 characters long; the limit is 20,000",
        ),
    ],
)
def test_size_arguments_and_statements_are_capped(sql: str, reason: str) -> None:
    with pytest.raises(GuardRejection) as info:
        check(sql)
    assert reason in info.value.reason


# Grows the 749 separators 16^7-fold (to about 200 GB): every function in it is allowed
# and no argument is a size, but the value it builds is far past any memory limit.
GROWTH = (
    "SELECT length(" + "replace(" * 7 + "string_agg(customer_name, 'a')"
    + ", 'a', 'aaaaaaaaaaaaaaaa')" * 7 + ") FROM fpr_records"
)  # fmt: skip


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_statement_past_the_memory_limit_is_stopped_outside_this_process(
    seeded_path: Path,
) -> None:
    wh = DuckDBWarehouse(seeded_path, memory_limit="256MB", result_cache=0)
    before = _peak_rss_mb()
    try:
        with pytest.raises(WarehouseError, match="memory"):
            run_sql(wh, GROWTH, timeout_s=60)
        # The warehouse answers the next query as before.
        assert run_sql(wh, "SELECT count(*) AS n FROM fpr_records").rows == [{"n": 750}]
    finally:
        wh.close()
    assert _peak_rss_mb() - before < 100


def test_a_statement_that_cannot_be_interrupted_still_ends_at_its_timeout(
    seeded_path: Path,
) -> None:
    import time

    wh = DuckDBWarehouse(seeded_path, memory_limit="2GB", result_cache=0)
    started = time.monotonic()
    try:
        with pytest.raises((QueryTimeout, WarehouseError)):
            run_sql(wh, GROWTH, timeout_s=1.0)
    finally:
        wh.close()
    assert time.monotonic() - started < 1.0 + 2.0


def test_the_guards_own_analysis_counts_toward_the_timeout(warehouse: DuckDBWarehouse) -> None:
    # Just under the size cap, and slow to analyse (sqlglot's qualify is quadratic here).
    heavy = "SELECT count(*) FROM fpr_records WHERE " + " OR ".join(
        f"account_balance = {i}" for i in range(780)
    )
    assert len(heavy) < 20_000
    with pytest.raises(QueryTimeout):
        run_sql(warehouse, heavy, timeout_s=0.05)


# -- inputs that crashed ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT " + "(" * 45 + "1" + ")" * 45, "nests 45 levels deep; the limit is 32"),
        ("SELECT " + "(" * 500 + "1" + ")" * 500, "nests 500 levels deep"),
        ("SELECT " + "NOT " * 3000 + "TRUE", "nests too deeply"),
        (
            "SELECT * FROM " + "(SELECT * FROM " * 40 + "fpr_records" + ") x" * 40,
            "nests 40 levels deep",
        ),
        ("SELECT '\udc80' AS x", "not valid text"),
        ("SELECT customer_name FROM fpr_records WHERE customer_name = '\ud800'", "U+D800"),
    ],
)
def test_inputs_that_crashed_are_refused(sql: str, reason: str, warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(GuardRejection) as info:
        run_sql(warehouse, sql)
    assert reason in info.value.reason


def test_timestamps_with_time_zone_come_back(warehouse: DuckDBWarehouse) -> None:
    ev = run_sql(warehouse, "SELECT CURRENT_TIMESTAMP AS now, to_timestamp(0) AS epoch")
    assert ev.rows[0]["epoch"].startswith("1970-01-01")
    assert ev.rows[0]["now"][:4].isdigit()


def _query_processes() -> list[int]:
    """Pids of the processes queries run in (children of a query server)."""
    servers, children = set(), []
    for pid in Path("/proc").iterdir():
        try:
            if b"tools.isolation" in (pid / "cmdline").read_bytes():
                servers.add(pid.name)
        except OSError:
            continue
    for pid in Path("/proc").iterdir():
        try:
            fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] in servers and fields[0] != "Z":
            children.append(int(pid.name))
    return children


SLOW = (
    "SELECT count(*) FROM fpr_records a, fpr_records b, fpr_records c, fpr_records d "
    "WHERE a.account_balance + b.account_balance > c.account_balance - d.account_balance"
)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_query_never_outlives_its_caller(how: str, seeded_path: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    copy = tmp_path / "fpr.duckdb"
    copy.write_bytes(seeded_path.read_bytes())
    script = (
        "from tools.guard import run_sql\n"
        "from tools.warehouse import DuckDBWarehouse\n"
        f"run_sql(DuckDBWarehouse({str(copy)!r}), {SLOW!r}, timeout_s=120)\n"
    )
    before = set(_query_processes())
    caller = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2]
    )
    deadline = time.monotonic() + 60
    while not (mine := set(_query_processes()) - before):
        assert caller.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    caller.send_signal(getattr(signal, how))
    caller.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in mine):
        assert time.monotonic() < deadline, "the query's process outlived its caller"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 " + "BETWEEN 1 AND 2 " * 1000,
        "SELECT 1 " + "IN (1) " * 2800,
        "SELECT 1 " + "IS DISTINCT FROM 1 " * 1000,
        "SELECT 'a' " + "LIKE 'a' ESCAPE 'x' " * 900,
    ],
)
def test_chains_too_deep_to_write_out_are_refused(sql: str, warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(GuardRejection, match="nests too deeply"):
        run_sql(warehouse, sql)


def test_any_value_a_query_returns_comes_back_as_json(warehouse: DuckDBWarehouse) -> None:
    ev = run_sql(
        warehouse,
        "SELECT '\\xFF\\x00'::BLOB AS b, CAST(any_value(customer_name) AS BLOB) AS name, "
        "INTERVAL 3 DAY AS i, histogram(product_recommendation_status) AS m, "
        "CAST(list(customer_transaction_count ORDER BY record_id) AS BIGINT[750]) AS fixed "
        "FROM fpr_records",
    )
    row = ev.rows[0]
    assert row["b"] == "0xff00" and row["name"].startswith("0x")
    assert sum(row["m"].values()) == 750 and len(row["fixed"]) == 750
    ev.model_dump_json()  # serialises


def test_a_result_is_bounded_in_size_not_only_in_rows(warehouse: DuckDBWarehouse) -> None:
    from tools.guard import MAX_RESULT_CHARS, MAX_VALUE_CHARS

    big = "SELECT (SELECT string_agg(customer_email, ',') FROM fpr_records) AS v FROM fpr_records"
    ev = run_sql(warehouse, big, row_cap=1000)
    assert all(len(r["v"]) <= MAX_VALUE_CHARS for r in ev.rows)
    assert ev.truncated and sum(len(r["v"]) for r in ev.rows) <= MAX_RESULT_CHARS + MAX_VALUE_CHARS
