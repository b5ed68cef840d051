"""Data in: fill the embedded warehouse's `fpr_records` from the generator or a file.

Both paths build the new table under a staging name and swap it in with one transaction,
which also rebuilds the customer snapshot (`tools.customers`), so a failed or interrupted
seed or load leaves the existing table and snapshot exactly as they were.
A file is validated against the schema first and rejected with every problem listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb

from tools import customers, generator
from tools.schema import (
    BY_NAME,
    COLUMN_NAMES,
    COLUMNS,
    FIVETRAN_DELETED,
    PRIMARY_KEY,
    SYSTEM_COLUMNS,
    TABLE,
    create_table_sql,
)

STAGING = f"{TABLE}__staging"
# Present while `fpr_records` is what `finmatch sync` made it (tools.sync); seed and load
# drop it, so a sync never merges into a table it did not fill.
SYNC_MARKER = "fpr_sync"
# How many example values and duplicate ids a load error shows per problem.
_EXAMPLES = 3


class LoadError(Exception):
    """A file did not match the schema; `problems` lists every reason."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        """Keep the file and its problems; the message lists them all."""
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{source} was not loaded ({len(problems)} problem{'s' if len(problems) > 1 else ''}); "
            f"the existing {TABLE} table is unchanged:\n{lines}"
        )


class WarehouseBusy(Exception):
    """The warehouse file is open elsewhere for writing."""


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a seed or load: the table now holds `rows` rows."""

    path: Path
    rows: int
    elapsed_s: float


@contextmanager
def writer(path: Path, *, progress: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the DuckDB file at `path` for writing; raise WarehouseBusy if it is in use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as e:
        raise WarehouseBusy(
            f"Cannot write {path}: {e}. Another process (the service, a sync or another "
            "seed) has it open; stop it or wait, then try again."
        ) from e
    try:
        # DuckDB's own progress bar: real progress of the insert, shown only to a terminal.
        con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
        yield con
    finally:
        con.close()


def swap_in(
    con: duckdb.DuckDBPyConnection,
    fill: Callable[[], None],
    *,
    synced: Callable[[], None] | None = None,
) -> int:
    """Build the staging table with `fill`, then replace `fpr_records` with it atomically.

    The table is no longer a sync's unless `synced` (run inside the same transaction)
    marks it so.
    """
    con.execute(f"DROP TABLE IF EXISTS {STAGING}")
    try:
        fill()
        count = con.execute(f"SELECT count(*) FROM {STAGING}").fetchone()
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DROP TABLE IF EXISTS {TABLE}")
        con.execute(f"ALTER TABLE {STAGING} RENAME TO {TABLE}")
        customers.refresh(con, live_source(con))
        con.execute(f"DROP TABLE IF EXISTS {SYNC_MARKER}")
        if synced:
            synced()
        con.execute("COMMIT")
    except BaseException:
        # Whatever failed (a bad file, Ctrl-C mid-insert), the old table stays untouched.
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        con.execute(f"DROP TABLE IF EXISTS {STAGING}")
        raise
    con.execute("CHECKPOINT")
    return int(count[0]) if count else 0


def live_source(con: duckdb.DuckDBPyConnection) -> str:
    """Return `fpr_records` as the queries see it: rows deleted at the source left out."""
    names = {r[0] for r in con.execute(f"SELECT * FROM {TABLE} LIMIT 0").description or []}
    if FIVETRAN_DELETED in names:
        return f"(SELECT * FROM {TABLE} WHERE COALESCE({FIVETRAN_DELETED}, FALSE) = FALSE)"
    return TABLE


def table_rows(path: Path) -> int | None:
    """Return how many records `fpr_records` in the DuckDB file holds; None if it has none."""
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        return records_in(con)
    finally:
        con.close()


def records_in(con: duckdb.DuckDBPyConnection) -> int | None:
    """Return how many records `fpr_records` holds on `con`; None if there is no such table."""
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE]
    ).fetchone()
    if not found or not found[0]:
        return None
    row = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    return int(row[0]) if row else 0


def seed_table(
    path: Path,
    *,
    rows: int = generator.DEFAULT_ROWS,
    seed: int = generator.DEFAULT_SEED,
    relationships: generator.Relationships | None = None,
    progress: bool = False,
) -> WriteResult:
    """Replace `fpr_records` in the DuckDB file at `path` with generated data."""
    select = generator.select_sql(rows, seed, relationships)
    started = time.perf_counter()
    with writer(path, progress=progress) as con:
        for statement in generator.setup_sql(rows, seed):
            con.execute(statement)

        def fill() -> None:
            con.execute(create_table_sql(STAGING))
            con.execute(f"INSERT INTO {STAGING} {select}")
            con.execute("DROP TABLE fm_ids")

        count = swap_in(con, fill)
    return WriteResult(path, count, time.perf_counter() - started)


def _reader_sql(source: Path) -> str:
    name = source.name.lower()
    literal = "'" + str(source).replace("'", "''") + "'"
    if name.endswith((".parquet", ".pq")):
        return f"read_parquet({literal})"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return f"read_csv({literal}, all_varchar = true, header = true)"
    raise LoadError(
        source, [f"unsupported file type {source.suffix!r}: use a .csv or .parquet file"]
    )


class _Check(NamedTuple):
    """One test of a column's values: the rows where `bad` holds are reported."""

    column: str
    text: str  # the projected column holding the value as trimmed text
    bad: str  # SQL, true of a bad value
    what: str | None  # what is wrong with such a value; None: it is empty


def _text(name: str) -> str:
    """Return the SQL for a raw column's value as trimmed text, NULL when empty."""
    return f"NULLIF(trim(CAST(\"{name}\" AS VARCHAR)), '')"


def _validate(con: duckdb.DuckDBPyConnection, source: Path, file_columns: list[str]) -> None:
    """Raise LoadError listing every way the raw table differs from the schema."""
    problems: list[str] = []
    present = set(file_columns)
    missing = [c for c in COLUMN_NAMES if c not in present]
    if missing:
        problems.append("missing columns: " + ", ".join(missing))
    unknown = [c for c in file_columns if c not in BY_NAME and c not in SYSTEM_COLUMNS]
    if unknown:
        problems.append("unexpected columns (not in the fpr_records schema): " + ", ".join(unknown))
    total_row = con.execute("SELECT count(*) FROM fm_raw").fetchone()
    total = int(total_row[0]) if total_row else 0
    if total == 0:
        problems.append("the file has no data rows")

    checks: list[_Check] = []
    # Each value is trimmed and cast once, below the aggregates that test it.
    projected: list[str] = ["fm_row"]
    check = checks.append

    for k, col in enumerate(COLUMNS):
        if col.name not in present:
            continue
        text, value, whole = f"t{k}", f"v{k}", f"w{k}"
        projected.append(f"{_text(col.name)} AS {text}")
        if not col.nullable:
            check(_Check(col.name, text, f"{text} IS NULL", None))
        if col.type == "string":
            continue
        projected.append(f"TRY_CAST({text} AS {col.sql_type}) AS {value}")
        good = f"{value} IS NOT NULL"
        if col.type == "bigint":
            # Casting text to BIGINT rounds '2.5'; a whole-number column must hold whole numbers.
            projected.append(f"TRY_CAST({text} AS DOUBLE) AS {whole}")
            good += f" AND {whole} = {value}"
        check(
            _Check(
                col.name, text, f"{text} IS NOT NULL AND NOT ({good})", f"that are not {col.type}"
            )
        )
        if col.type == "double":
            check(
                _Check(
                    col.name,
                    text,
                    f"{good} AND NOT isfinite({value})",
                    "that are not finite numbers (NaN or infinity)",
                )
            )
        outside = [f"{value} < {col.low!r}"] if col.low is not None else []
        if col.high is not None:
            outside.append(f"{value} > {col.high!r}")
        if outside:
            check(
                _Check(
                    col.name,
                    text,
                    f"{good} AND isfinite({value}) AND ({' OR '.join(outside)})",
                    f"out of range (must be {col.range_text})",
                )
            )
    for k, (name, sql_type) in enumerate(SYSTEM_COLUMNS.items()):
        if name in present:
            text = f"s{k}"
            projected.append(f"{_text(name)} AS {text}")
            check(
                _Check(
                    name,
                    text,
                    f"{text} IS NOT NULL AND TRY_CAST({text} AS {sql_type}) IS NULL",
                    f"that are not {sql_type.lower()}",
                )
            )
    if checks and total:
        problems += _value_problems(con, ", ".join(projected), checks)
    if PRIMARY_KEY in present and total:
        dup = con.execute(
            f"SELECT {PRIMARY_KEY}, count(*) AS n FROM fm_raw WHERE {PRIMARY_KEY} IS NOT NULL "
            f"GROUP BY 1 HAVING count(*) > 1 ORDER BY n DESC, 1 LIMIT {_EXAMPLES}"
        ).fetchall()
        if dup:
            dup_total = con.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM fm_raw WHERE {PRIMARY_KEY} IS NOT NULL "
                f"GROUP BY {PRIMARY_KEY} HAVING count(*) > 1)"
            ).fetchone()
            shown = ", ".join(f"{rid!r} ({n}x)" for rid, n in dup)
            problems.append(
                f"column {PRIMARY_KEY}: {dup_total[0] if dup_total else len(dup)} duplicated "
                f"id(s), e.g. {shown}"
            )
    if problems:
        raise LoadError(source, problems)


def _value_problems(
    con: duckdb.DuckDBPyConnection, projected: str, checks: list[_Check]
) -> list[str]:
    """Run the value checks over `fm_raw`; describe each that some rows fail."""
    rows = f"(SELECT {projected} FROM fm_raw)"
    counts = f"SELECT {', '.join(f'count(*) FILTER (WHERE {c.bad})' for c in checks)} FROM {rows}"
    found = con.execute(counts).fetchone() or ()
    failed = [(check, n) for check, n in zip(checks, found, strict=True) if n]
    if not failed:
        return []
    # Only for what failed (a good file skips this pass): the first bad row and its value,
    # so the message names one cell.
    firsts = ", ".join(
        f"min(fm_row) FILTER (WHERE {c.bad}), arg_min({c.text}, fm_row) FILTER (WHERE {c.bad})"
        for c, _ in failed
    )
    where = con.execute(f"SELECT {firsts} FROM {rows}").fetchone() or ()
    problems = []
    for i, (c, count) in enumerate(failed):
        first_row, example = where[2 * i : 2 * i + 2]
        if c.what is None:
            problems.append(
                f"column {c.column}: {count} empty value(s), first at data row {first_row}"
            )
        else:
            problems.append(
                f"column {c.column}: {count} value(s) {c.what}, e.g. {example!r} "
                f"at data row {first_row}"
            )
    return problems


def load_file(path: Path, source: Path, *, progress: bool = False) -> WriteResult:
    """Replace `fpr_records` in the DuckDB file at `path` with the rows of a CSV/Parquet file."""
    source = Path(source)
    if not source.is_file():
        raise LoadError(source, [f"no such file: {source}"])
    reader = _reader_sql(source)
    started = time.perf_counter()
    with writer(path, progress=progress) as con:
        try:
            con.execute(
                "CREATE TEMP TABLE fm_raw AS "
                f"SELECT *, row_number() OVER () AS fm_row FROM {reader}"
            )
        except duckdb.Error as e:
            raise LoadError(source, [f"the file could not be read: {e}"]) from e
        described = con.execute("SELECT * FROM fm_raw LIMIT 0").description or []
        file_columns = [d[0] for d in described if d[0] != "fm_row"]
        _validate(con, source, file_columns)
        system = [c for c in SYSTEM_COLUMNS if c in file_columns]

        def fill() -> None:
            con.execute(create_table_sql(STAGING))
            for col in system:
                con.execute(f"ALTER TABLE {STAGING} ADD COLUMN {col} {SYSTEM_COLUMNS[col]}")
            # The same conversions `_validate` tried, so none of them can fail here.
            casts = [f"CAST({_text(c.name)} AS {c.sql_type})" for c in COLUMNS]
            casts += [f"CAST({_text(c)} AS {SYSTEM_COLUMNS[c]})" for c in system]
            names = ", ".join([*COLUMN_NAMES, *system])
            con.execute(f"INSERT INTO {STAGING} ({names}) SELECT {', '.join(casts)} FROM fm_raw")

        count = swap_in(con, fill)
    return WriteResult(path, count, time.perf_counter() - started)
