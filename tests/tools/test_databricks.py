"""Databricks backend: SQL rendering and parameter handling.

No Databricks workspace is reachable here, so the connector's `connect()` is replaced by
a fake whose cursor records the statement and parameters it receives and answers with
canned rows. Everything above the cursor (rendering, transpiling, binding, row caps,
timeouts, errors) is the real code.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import SecretStr

from tools.databricks import DatabricksWarehouse
from tools.guard import run_sql
from tools.metrics import Filters, run_metric
from tools.schema import COLUMN_NAMES
from tools.settings import WarehouseSettings
from tools.warehouse import QueryTimeout, WarehouseError, open_warehouse


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.description: list[tuple[str, ...]] | None = None
        self._rows: list[tuple[Any, ...]] = []
        self.cancelled = threading.Event()

    def execute(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self.conn.executed.append((sql, parameters))
        if "LIMIT 0" in sql:
            cols = [*COLUMN_NAMES, *self.conn.extra_columns]
            self.description = [(c, "string") for c in cols]
            self._rows = []
            return
        if self.conn.hang:
            if not self.cancelled.wait(5):
                raise AssertionError("never cancelled")
            raise RuntimeError("Query was cancelled")
        if self.conn.fail:
            raise RuntimeError(self.conn.fail)
        self.description = [(c, "string") for c in self.conn.result_columns]
        self._rows = list(self.conn.result_rows)

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]:
        out, self._rows = self._rows[:n], self._rows[n:]
        return out

    def fetchall(self) -> list[tuple[Any, ...]]:
        out, self._rows = self._rows, []
        return out

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        pass


class FakeConnection:
    def __init__(self) -> None:
        self.executed: list[tuple[str, dict[str, Any] | None]] = []
        self.kwargs: dict[str, Any] = {}
        self.extra_columns: list[str] = []
        self.result_columns: list[str] = ["n"]
        self.result_rows: list[tuple[Any, ...]] = [(1,)]
        self.hang = False
        self.fail: str | None = None
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake() -> FakeConnection:
    return FakeConnection()


@pytest.fixture
def dbx(fake: FakeConnection) -> DatabricksWarehouse:
    def connect(**kwargs: Any) -> FakeConnection:
        fake.kwargs = kwargs
        return fake

    return DatabricksWarehouse(
        host="https://adb-123.azuredatabricks.net/",
        http_path="/sql/1.0/warehouses/abc",
        token="dapi-secret",
        catalog="ts-catalog-demo",
        schema="fpr_connector_dbx",
        table="fpr_records",
        connect=connect,
    )


def test_metric_sql_is_transpiled_qualified_and_parameterised(
    dbx: DatabricksWarehouse, fake: FakeConnection
) -> None:
    fake.result_columns = ["breakdown", "customer_segment"]
    fake.result_rows = [("segment", "Retail")]
    ev = run_metric(dbx, "value_at_risk", Filters(segment="Retail", product_type="Mortgage"))
    sql, params = fake.executed[-1]
    assert "`ts-catalog-demo`.`fpr_connector_dbx`.`fpr_records` AS fpr_records" in sql
    assert "MAX_BY(" in sql and "ARG_MAX" not in sql  # DuckDB's arg_max, in Databricks SQL
    assert "customer_segment = :f_segment" in sql and "product_type = :f_product_type" in sql
    assert "$" not in sql
    assert params == {"high_risk": 0.6, "f_segment": "Retail", "f_product_type": "Mortgage"}
    assert ev.sql == sql and ev.rows == [{"breakdown": "segment", "customer_segment": "Retail"}]
    assert (
        ev.warehouse
        == "databricks://adb-123.azuredatabricks.net/ts-catalog-demo.fpr_connector_dbx.fpr_records"
    )
    assert fake.kwargs["server_hostname"] == "adb-123.azuredatabricks.net"
    assert fake.kwargs["access_token"] == "dapi-secret"
    assert fake.kwargs["_retry_stop_after_attempts_count"] == 3

    # The table can change between statements: nothing is kept, each request queries.
    assert dbx.results is None
    executed = len(fake.executed)
    again = run_metric(dbx, "value_at_risk", Filters(segment="Retail", product_type="Mortgage"))
    assert len(fake.executed) == executed + 1 and not again.cached


def test_deleted_rows_are_filtered_when_the_column_exists(
    dbx: DatabricksWarehouse, fake: FakeConnection
) -> None:
    fake.extra_columns = ["_fivetran_deleted", "_fivetran_synced"]
    run_metric(dbx, "kpis")
    sql, _ = fake.executed[-1]
    assert "COALESCE(_fivetran_deleted, FALSE) = FALSE" in sql
    assert "_fivetran_synced" not in sql


def test_guarded_sql_gets_its_cap_and_dialect(
    dbx: DatabricksWarehouse, fake: FakeConnection
) -> None:
    fake.result_rows = [(i,) for i in range(6)]
    ev = run_sql(
        dbx,
        "SELECT customer_id, arg_max(product_type, last_updated_epoch) FROM fpr_records GROUP BY 1",
        row_cap=5,
    )
    sql, params = fake.executed[-1]
    assert "MAX_BY(product_type, last_updated_epoch)" in sql and sql.endswith("LIMIT 6")
    assert params is None
    assert ev.row_count == 5 and ev.truncated


def test_timeout_cancels_the_statement(dbx: DatabricksWarehouse, fake: FakeConnection) -> None:
    dbx.table_columns()
    fake.hang = True
    with pytest.raises(QueryTimeout, match="longer than 0.1 s"):
        run_metric(dbx, "kpis", timeout_s=0.1)


def test_warehouse_errors_are_explained(dbx: DatabricksWarehouse, fake: FakeConnection) -> None:
    dbx.table_columns()
    fake.fail = "TABLE_OR_VIEW_NOT_FOUND"
    with pytest.raises(WarehouseError, match="Databricks rejected the query: TABLE_OR_VIEW"):
        run_metric(dbx, "kpis")
    dbx.close()
    assert fake.closed


def test_connection_failure_names_the_settings() -> None:
    def refuse(**_: Any) -> None:
        raise OSError("connection refused")

    wh = DatabricksWarehouse(
        host="h", http_path="/p", token="t", catalog="c", schema="s", connect=refuse
    )
    with pytest.raises(WarehouseError, match="Check DATABRICKS_HOST, DATABRICKS_SQL_HTTP_PATH"):
        wh.table_columns()


def test_url_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABRICKS_HOST",
        "DATABRICKS_SQL_HTTP_PATH",
        "DATABRICKS_TOKEN",
        "UC_CATALOG",
        "UC_SCHEMA",
        "UC_TABLE",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        WarehouseError,
        match="DATABRICKS_HOST, DATABRICKS_SQL_HTTP_PATH, DATABRICKS_TOKEN, UC_CATALOG, UC_SCHEMA",
    ):
        open_warehouse("databricks://", WarehouseSettings(_env_file=None))
    monkeypatch.setenv("DATABRICKS_HOST", "https://x.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_SQL_HTTP_PATH", "/sql/1.0/warehouses/w")
    monkeypatch.setenv("DATABRICKS_TOKEN", "tok")
    monkeypatch.setenv("UC_CATALOG", "ts-catalog-demo")
    monkeypatch.setenv("UC_SCHEMA", "fpr_connector_dbx")
    settings = WarehouseSettings(_env_file=None)
    assert isinstance(settings.databricks_token, SecretStr)
    wh = open_warehouse("databricks://?table=fpr_copy", settings)
    assert isinstance(wh, DatabricksWarehouse)
    assert (wh.host, wh.catalog, wh.schema, wh.table) == (
        "x.cloud.databricks.com",
        "ts-catalog-demo",
        "fpr_connector_dbx",
        "fpr_copy",
    )
    with pytest.raises(WarehouseError, match="Unsupported warehouse URL 'postgres://x'"):
        open_warehouse("postgres://x", settings)


def test_duckdb_urls() -> None:
    from pathlib import Path

    from tools.settings import default_warehouse_url
    from tools.warehouse import duckdb_path

    assert duckdb_path("duckdb:///data/fpr.duckdb") == Path("/data/fpr.duckdb")
    assert duckdb_path("duckdb:////data/fpr.duckdb") == Path("/data/fpr.duckdb")
    assert duckdb_path("duckdb://rel/fpr.duckdb") == Path("rel/fpr.duckdb")
    url = default_warehouse_url()
    assert url.startswith("duckdb:///") and url.endswith("/.finmatch/fpr.duckdb")
    assert duckdb_path(url).is_absolute()
    with pytest.raises(WarehouseError, match="needs a file path"):
        duckdb_path("duckdb://")
