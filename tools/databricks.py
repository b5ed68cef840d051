"""Databricks SQL backend: `fpr_records` in Unity Catalog through a SQL warehouse.

Configured by the deployment's own variables: `DATABRICKS_HOST`,
`DATABRICKS_SQL_HTTP_PATH`, `DATABRICKS_TOKEN`, `UC_CATALOG`, `UC_SCHEMA`, `UC_TABLE`.
The URL `databricks://` uses them as they are; `databricks://?catalog=c&schema=s&table=t`
overrides the table location. Queries arrive in the canonical dialect and are transpiled
to Databricks SQL by `Warehouse.render`; parameters are bound natively (`:name`).

The warehouse enforces no read-only mode of its own: give the token's principal only
`SELECT` on the table; the SQL guard keeps model-written SQL to one read-only query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse

from sqlglot import exp

from tools.settings import WarehouseSettings
from tools.warehouse import (
    QueryTimeout,
    Warehouse,
    WarehouseError,
    fetch_capped,
    statement_timeout,
    timeout_message,
)

# The connector retries for up to 900 s by default; a dashboard or an agent step would
# rather fail in seconds with a clear message.
CONNECT_OPTIONS: dict[str, Any] = {
    "_retry_stop_after_attempts_count": 3,
    "_retry_stop_after_attempts_duration": 60,
    "_socket_timeout": 60,
}


class DatabricksWarehouse(Warehouse):
    """`catalog.schema.table` read through a Databricks SQL warehouse."""

    dialect = "databricks"

    def __init__(
        self,
        *,
        host: str,
        http_path: str,
        token: str,
        catalog: str,
        schema: str,
        table: str = "fpr_records",
        connect: Callable[..., Any] | None = None,
    ) -> None:
        """Remember the connection settings; connect lazily on the first query."""
        super().__init__()
        self.host = host.removeprefix("https://").removeprefix("http://").rstrip("/")
        self.http_path = http_path
        self._token = token
        self.catalog, self.schema, self.table = catalog, schema, table
        self.url = f"databricks://{self.host}/{catalog}.{schema}.{table}"
        self._connect = connect
        self._con: Any = None
        self._con_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, settings: WarehouseSettings) -> DatabricksWarehouse:
        """Build from `databricks://[?catalog=&schema=&table=]` and the settings."""
        query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
        values = {
            "DATABRICKS_HOST": settings.databricks_host,
            "DATABRICKS_SQL_HTTP_PATH": settings.databricks_sql_http_path,
            "DATABRICKS_TOKEN": (
                settings.databricks_token.get_secret_value() if settings.databricks_token else None
            ),
            "UC_CATALOG": query.get("catalog", settings.uc_catalog),
            "UC_SCHEMA": query.get("schema", settings.uc_schema),
            "UC_TABLE": query.get("table", settings.uc_table),
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise WarehouseError(
                "The databricks:// warehouse needs these settings, which are not set: "
                + ", ".join(missing)
                + ". Set them in the environment or in .env."
            )
        return cls(
            host=str(values["DATABRICKS_HOST"]),
            http_path=str(values["DATABRICKS_SQL_HTTP_PATH"]),
            token=str(values["DATABRICKS_TOKEN"]),
            catalog=str(values["UC_CATALOG"]),
            schema=str(values["UC_SCHEMA"]),
            table=str(values["UC_TABLE"]),
        )

    def source_table(self) -> exp.Table:
        """Return `catalog.schema.table`, quoted (catalog names like `ts-catalog-demo`)."""
        return exp.Table(
            this=exp.to_identifier(self.table, quoted=True),
            db=exp.to_identifier(self.schema, quoted=True),
            catalog=exp.to_identifier(self.catalog, quoted=True),
        )

    def _connection(self) -> Any:
        with self._con_lock:
            if self._con is None:
                connect = self._connect
                if connect is None:
                    from databricks import sql as dbsql

                    connect = dbsql.connect
                try:
                    self._con = connect(
                        server_hostname=self.host,
                        http_path=self.http_path,
                        access_token=self._token,
                        **CONNECT_OPTIONS,
                    )
                except Exception as e:  # the connector raises many unrelated types
                    raise WarehouseError(
                        f"Cannot connect to the Databricks SQL warehouse at {self.host} "
                        f"({self.http_path}): {e}. Check DATABRICKS_HOST, "
                        "DATABRICKS_SQL_HTTP_PATH and DATABRICKS_TOKEN, and that the "
                        "warehouse is running."
                    ) from e
            return self._con

    def _execute(
        self, sql: str, params: Mapping[str, Any], max_rows: int | None, timeout_s: float
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        cursor = self._connection().cursor()
        try:
            with statement_timeout(timeout_s, cursor.cancel) as fired:
                try:
                    cursor.execute(sql, dict(params) if params else None)
                    columns = [d[0] for d in cursor.description or []]
                    rows, truncated = fetch_capped(cursor, max_rows)
                except Exception as e:
                    if fired.is_set():
                        raise QueryTimeout(timeout_message(timeout_s)) from e
                    raise WarehouseError(f"Databricks rejected the query: {e}") from e
        finally:
            cursor.close()
        return columns, rows, truncated

    def close(self) -> None:
        """Close the connection if one was opened."""
        with self._con_lock:
            if self._con is not None:
                self._con.close()
                self._con = None
