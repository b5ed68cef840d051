"""The `Warehouse` interface over `fpr_records`, and its backend chosen by URL.

Queries are written once, in DuckDB's dialect, against the bare name `fpr_records`.
`Warehouse.run` points that name at the real table (qualified for Unity Catalog, rows
deleted at the source filtered out, Fivetran's own columns hidden), transpiles the
statement with sqlglot to the backend's dialect, binds named parameters (`:name`),
enforces a row cap and a statement timeout, and returns what ran and what came back.

Backends: `duckdb:///path/file.duckdb` (embedded, the default) and `databricks://`
(a Databricks SQL warehouse reading Unity Catalog; see `tools.databricks`).
"""

from __future__ import annotations

import abc
import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import sqlglot
from sqlglot import exp

from tools.schema import COLUMN_NAMES, FIVETRAN_DELETED, TABLE
from tools.settings import WarehouseSettings, memory_bytes

CANONICAL_DIALECT = "duckdb"
# What a process with DuckDB, sqlglot and the guard loaded holds before it queries
# (about 75 MB measured), with room to spare.
CHILD_BASE_BYTES = 128 * 2**20
SPILL_FACTOR = 4  # a query may spill to disk up to this many times its memory limit


class WarehouseError(Exception):
    """A query or connection failed for a reason the user can act on."""


class WarehouseNotFound(WarehouseError):
    """The configured warehouse or its `fpr_records` table does not exist."""


class QueryTimeout(WarehouseError):
    """A statement ran past its timeout and was interrupted."""


def timeout_message(timeout_s: float) -> str:
    """Return what a user is told when a statement ran past `timeout_s`."""
    return (
        f"The query ran longer than {timeout_s:g} s and was stopped. "
        "Narrow it (filters, fewer groups) or raise the timeout."
    )


@dataclass(frozen=True)
class QueryResult:
    """What one statement returned, and the statement that actually ran."""

    sql: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_ms: float


RENDER_CACHE = 512  # rendered statements kept per warehouse


class ResultCache:
    """Results computed from data that cannot change while its warehouse is open.

    Thread-safe, least recently used first out, at most `size` entries. Counts its hits.
    """

    def __init__(self, size: int) -> None:
        """Keep at most `size` results (at least one)."""
        self._lru: cachetools.LRUCache[Hashable, Any] = cachetools.LRUCache(maxsize=max(1, size))
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: Hashable) -> Any:
        """Return the result kept under `key`, or None."""
        with self._lock:
            value = self._lru.get(key)
            if value is not None:
                self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` under `key`, dropping the least recently used when full."""
        with self._lock:
            self._lru[key] = value

    def __len__(self) -> int:
        """Return how many results are kept."""
        return len(self._lru)

    def clear(self) -> None:
        """Drop every result."""
        with self._lock:
            self._lru.clear()


class Warehouse(abc.ABC):
    """Read access to `fpr_records` in one backend."""

    dialect: str = CANONICAL_DIALECT
    url: str

    def __init__(self) -> None:
        """Start with the table's column list unknown (it is read on first use)."""
        self._columns: list[str] | None = None
        self._lock = threading.Lock()
        self._rendered: dict[str, str] = {}
        self._rendered_lock = threading.Lock()
        # Set by backends whose data cannot change while they are open: what a query
        # computed then stays right, and `tools.metrics` reuses it.
        self.results: ResultCache | None = None

    # -- backend hooks -------------------------------------------------------------
    @abc.abstractmethod
    def source_table(self) -> exp.Table:
        """Return the fully qualified table that holds `fpr_records`."""

    @abc.abstractmethod
    def _execute(
        self, sql: str, params: Mapping[str, Any], max_rows: int | None, timeout_s: float
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """Run `sql` (already in the backend dialect); return columns, rows, truncated."""

    def close(self) -> None:  # noqa: B027 - backends without resources need no close
        """Release connections."""

    def reopener(self) -> Callable[[], Warehouse] | None:
        """Return a picklable callable that opens this warehouse again in another process.

        None (the default) for a remote warehouse, which bounds its queries' resources
        itself; the embedded one returns one, and untrusted SQL runs in a child process.
        """
        return None

    def memory_ceiling(self) -> int:
        """Return the resident memory, in bytes, past which an isolated query is stopped."""
        raise NotImplementedError(f"{type(self).__name__} does not run queries in isolation")

    # -- shared behaviour ------------------------------------------------------------
    def table_columns(self) -> list[str]:
        """Return the columns the physical table has (schema columns plus any system ones)."""
        if self._columns is None:
            with self._lock:
                if self._columns is None:
                    sql = exp.select("*").from_(self.source_table()).limit(0).sql(self.dialect)
                    cols, _, _ = self._execute(sql, {}, 0, 30.0)
                    self._columns = cols
        return self._columns

    def customer_snapshot(self) -> bool:
        """Return whether a current customer snapshot (`tools.customers`) can be read."""
        return False

    def has_deleted_flag(self) -> bool:
        """Return whether the table carries Fivetran's soft-delete column."""
        return FIVETRAN_DELETED in self.table_columns()

    def live_relation(self, alias: str = TABLE) -> exp.Expr:
        """Return the relation a query's `fpr_records` is replaced with."""
        source = self.source_table()
        physical = self.table_columns()
        extra = [c for c in physical if c not in COLUMN_NAMES]
        if not extra and source.name == TABLE and not source.args.get("db"):
            return exp.to_table(TABLE).as_(alias) if alias != TABLE else exp.to_table(TABLE)
        if not extra:
            return source.copy().as_(alias)
        live = exp.select(*[c for c in COLUMN_NAMES if c in physical]).from_(source.copy())
        if FIVETRAN_DELETED in physical:
            # A row deleted at the source never counts anywhere.
            live = live.where(f"COALESCE({FIVETRAN_DELETED}, FALSE) = FALSE")
        return live.subquery(alias)

    def render(self, query: str | exp.Expr) -> str:
        """Return `query` pointed at the live table, in this backend's dialect.

        The live relation is fixed for the life of this object (its columns are read
        once), so a query text always renders the same: the last RENDER_CACHE texts are
        kept, sparing every run the parse and transpile of the catalog's statements.
        """
        if isinstance(query, str):
            cached = self._rendered.get(query)
            if cached is None:
                cached = self._render(sqlglot.parse_one(query, read=CANONICAL_DIALECT))
                with self._rendered_lock:  # queries render on many threads at once
                    if len(self._rendered) >= RENDER_CACHE:
                        self._rendered.pop(next(iter(self._rendered)))
                    self._rendered[query] = cached
            return cached
        return self._render(query)

    def _render(self, tree: exp.Expr) -> str:
        tree = tree.copy()
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for table in list(tree.find_all(exp.Table)):
            if (
                table.name.lower() == TABLE
                and not table.args.get("db")
                and TABLE not in ctes
                and isinstance(table.this, exp.Identifier)
            ):
                table.replace(self.live_relation(table.alias_or_name))
        return tree.sql(self.dialect)

    def run(
        self,
        query: str | exp.Expr,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int | None = None,
        timeout_s: float = 60.0,
    ) -> QueryResult:
        """Run a canonical-dialect query against the live `fpr_records`."""
        sql = self.render(query)
        started = time.perf_counter()
        columns, rows, truncated = self._execute(sql, dict(params or {}), max_rows, timeout_s)
        elapsed = (time.perf_counter() - started) * 1000
        return QueryResult(sql, columns, rows, truncated, round(elapsed, 3))


@contextmanager
def statement_timeout(timeout_s: float, cancel: Any) -> Iterator[threading.Event]:
    """Call `cancel()` if the block runs longer than `timeout_s`; yield an Event set if it did."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        cancel()

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def fetch_capped(cursor: Any, max_rows: int | None) -> tuple[list[tuple[Any, ...]], bool]:
    """Fetch at most `max_rows` rows from `cursor`; report whether more were there."""
    if max_rows is None:
        return [tuple(r) for r in cursor.fetchall()], False
    rows = [tuple(r) for r in cursor.fetchmany(max_rows + 1)] if max_rows >= 0 else []
    return rows[:max_rows], len(rows) > max_rows


class DuckDBWarehouse(Warehouse):
    """`fpr_records` in a DuckDB file, opened read-only with external access switched off."""

    dialect = "duckdb"

    def __init__(
        self, path: str | Path, *, memory_limit: str = "1GB", result_cache: int = 256
    ) -> None:
        """Open `path` read-only; fail clearly if it does not exist.

        `memory_limit` bounds DuckDB's buffer pool, which otherwise keeps every block it
        has read cached (up to 80% of RAM): with it, memory stays flat however large the
        table grows, and big aggregations spill instead.

        While this read-only connection is open no process can write the file (DuckDB
        locks it), so the data cannot change: up to `result_cache` metric results are
        kept for reuse (0 keeps none).
        """
        super().__init__()
        import duckdb

        self.memory_limit = memory_limit
        self._memory_bytes = memory_bytes(memory_limit)
        if result_cache > 0:
            self.results = ResultCache(result_cache)

        self.path = Path(path)
        self.url = f"duckdb://{self.path}"
        self._snapshot: bool | None = None
        self._snapshot_lock = threading.Lock()
        if not self.path.exists():
            raise WarehouseNotFound(
                f"No warehouse file at {self.path}. Create it with `finmatch seed` "
                "(synthetic data) or `finmatch load FILE`, or point FINMATCH_WAREHOUSE "
                "(or --warehouse) at an existing one."
            )
        try:
            # Read-only is not enough on its own (COPY ... TO, read_csv and ATTACH still
            # run): external access off and the configuration locked make the connection
            # a second wall behind the SQL guard.
            self._con = duckdb.connect(
                str(self.path),
                read_only=True,
                config={
                    "enable_external_access": False,
                    "lock_configuration": True,
                    "memory_limit": memory_limit,
                    # What a big query spills to disk is bounded too, not 90% of the
                    # free disk (DuckDB's default).
                    "max_temp_directory_size": f"{SPILL_FACTOR * self._memory_bytes}B",
                },
            )
        except duckdb.Error as e:
            raise WarehouseError(
                f"Cannot open the warehouse file {self.path}: {e}. If another process is "
                "writing it (a seed, load or sync), wait for it to finish."
            ) from e
        tables = self._con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE]
        ).fetchone()
        if not tables or not tables[0]:
            self._con.close()
            raise WarehouseNotFound(
                f"The warehouse file {self.path} has no {TABLE} table. "
                "Create it with `finmatch seed` or `finmatch load FILE`."
            )

    def source_table(self) -> exp.Table:
        """Return the bare table name: the file holds `fpr_records` in its main schema."""
        return exp.to_table(TABLE)

    def customer_snapshot(self) -> bool:
        """Return whether `fpr_customers` was built from exactly the live records.

        Checked once per connection: while this read-only connection is open no other
        process can write the file, so the answer cannot change.
        """
        if self._snapshot is None:
            with self._snapshot_lock:
                if self._snapshot is None:
                    self._snapshot = self._snapshot_matches()
        return self._snapshot

    def _snapshot_matches(self) -> bool:
        from tools.customers import CUSTOMERS, FINGERPRINT_SQL, SOURCE

        found = self._con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN (?, ?)",
            [CUSTOMERS, SOURCE],
        ).fetchone()
        if not found or found[0] != 2:
            return False
        stored = self._con.execute(f"SELECT * FROM {SOURCE}").fetchone()
        _, live, _ = self._execute(self.render(FINGERPRINT_SQL), {}, None, 60.0)
        return stored is not None and tuple(stored) == tuple(live[0])

    def _execute(
        self, sql: str, params: Mapping[str, Any], max_rows: int | None, timeout_s: float
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        import duckdb

        cursor = self._con.cursor()
        try:
            with statement_timeout(timeout_s, cursor.interrupt) as fired:
                try:
                    cursor.execute(sql, dict(params) if params else None)
                    columns = [d[0] for d in cursor.description or []]
                    rows, truncated = fetch_capped(cursor, max_rows)
                except duckdb.InterruptException as e:
                    if fired.is_set():
                        raise QueryTimeout(timeout_message(timeout_s)) from e
                    raise
                except duckdb.Error as e:
                    raise WarehouseError(f"The warehouse rejected the query: {e}") from e
        finally:
            cursor.close()
        return columns, rows, truncated

    def reopener(self) -> Callable[[], Warehouse]:
        """Return how to open this file read-only in a child process, for untrusted SQL.

        The child's DuckDB may use the memory limit less what a process with DuckDB
        loaded needs itself (CHILD_BASE_BYTES, at most half), so DuckDB's own limit
        usually stops a big query cleanly before the child passes `memory_ceiling`.
        """
        own = max(self._memory_bytes - CHILD_BASE_BYTES, self._memory_bytes // 2)
        return functools.partial(DuckDBWarehouse, self.path, memory_limit=f"{own}B", result_cache=0)

    def memory_ceiling(self) -> int:
        """Return the memory limit plus a tenth: where an isolated query's process is killed.

        The process is measured every POLL_S (10 ms); a fast allocation overshoots by tens
        of MB before it is seen, which the tenth leaves room for within a quarter.
        """
        return int(self._memory_bytes * 1.1)

    def close(self) -> None:
        """Close the read-only connection and drop the kept results.

        Once closed, the file may be written again: nothing kept from before may answer.
        """
        self.results = None
        self._con.close()


def duckdb_path(url: str) -> Path:
    """Return the file path of a `duckdb://` URL (`duckdb:///abs/path` or `duckdb://rel`)."""
    rest = url[len("duckdb://") :]
    if not rest:
        raise WarehouseError(
            "A duckdb:// warehouse URL needs a file path, e.g. duckdb:///data/fpr.duckdb"
        )
    if rest.startswith("//"):  # duckdb:////abs/path, an absolute path after duckdb:///
        rest = rest[1:]
    return Path(rest).expanduser()


def open_warehouse(url: str | None = None, settings: WarehouseSettings | None = None) -> Warehouse:
    """Open the warehouse at `url` (default: the FINMATCH_WAREHOUSE setting)."""
    settings = settings or WarehouseSettings()
    url = url or settings.finmatch_warehouse
    if url.startswith("duckdb://"):
        return DuckDBWarehouse(
            duckdb_path(url),
            memory_limit=settings.finmatch_duckdb_memory_limit,
            result_cache=settings.finmatch_result_cache,
        )
    if url.startswith("databricks://"):
        from tools.databricks import DatabricksWarehouse

        return DatabricksWarehouse.from_url(url, settings)
    raise WarehouseError(
        f"Unsupported warehouse URL {url!r}. Use duckdb:///path/to/file.duckdb for the "
        "embedded warehouse or databricks:// for a Databricks SQL warehouse "
        "(configured by DATABRICKS_HOST, DATABRICKS_SQL_HTTP_PATH, DATABRICKS_TOKEN, "
        "UC_CATALOG, UC_SCHEMA, UC_TABLE)."
    )


def json_value(value: Any) -> Any:
    """Return `value` as JSON-friendly data (dates as ISO text, decimals as floats).

    Bytes (BLOB, GEOMETRY) become hex text `0x...`, UUIDs and intervals text, and lists,
    structs and maps are converted through; a map's keys become text.
    """
    import datetime
    import decimal
    import math
    import uuid

    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return json_value(float(value))
    if isinstance(value, datetime.date | datetime.datetime | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if isinstance(value, uuid.UUID | datetime.timedelta):
        return str(value)
    if isinstance(value, list | tuple | set):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(json_value(k)): json_value(v) for k, v in value.items()
        }
    return str(value)


def as_records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Return rows as JSON-friendly dicts keyed by column name."""
    return [{c: json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
