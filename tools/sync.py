"""`finmatch sync`: run the connector with the Fivetran SDK's tester, then apply what landed.

Two stages, each safe to stop at any point:

1. **Connector.** `fivetran debug` (the SDK's own local runner, in the connector's
   environment) runs `connector/connector.py` against the source API. It writes every
   page into its landing file `<workspace>/files/warehouse.db` (DuckDB, schema `tester`)
   and the connector's state into `<workspace>/files/state.json` at every checkpoint, so
   a sync stopped midway resumes after the last page it finished. A record the connector
   rejects for breaking the contract is held back in that state and asked for again by
   every sync until it arrives intact; `SyncResult.held_back` counts those not landed yet.
2. **Apply.** The landed rows the warehouse does not hold yet (matched on `record_id`
   and `_fivetran_synced`) replace their older versions in `fpr_records` in one
   transaction, which also rebuilds the customer snapshot and marks the table as a
   sync's (`fpr_sync`). Applying twice changes nothing; a sync that fetched nothing does
   not open the warehouse for writing.

The workspace (`<home>/connector/`) holds a copy of the connector, its configuration (with
the key; readable by its owner only), the landing file and the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from tools import customers
from tools.ingest import (
    STAGING,
    SYNC_MARKER,
    WarehouseBusy,
    live_source,
    swap_in,
    table_rows,
    writer,
)
from tools.schema import (
    COLUMN_NAMES,
    FIVETRAN_DELETED,
    FIVETRAN_SYNCED,
    PRIMARY_KEY,
    SYSTEM_COLUMNS,
    TABLE,
    create_table_sql,
)
from tools.settings import project_home

ROOT = Path(__file__).resolve().parents[1]
CONNECTOR_DIR = ROOT / "connector"
# Where the SDK's tester lands tables (its fixed schema name) and keeps the state.
LANDING_SCHEMA = "tester"
_TAIL = 40


class SyncError(Exception):
    """A sync could not run or failed; the message says why and what to do."""


@dataclass(frozen=True)
class ApplyResult:
    """What applying the landed rows changed in the warehouse."""

    inserted: int
    updated: int
    rows: int
    elapsed_s: float
    replaced: bool = False

    @property
    def written(self) -> int:
        """Rows written (new or newer versions)."""
        return self.inserted + self.updated


@dataclass(frozen=True)
class SyncResult:
    """Outcome of one `finmatch sync`."""

    fetched: int
    pages: int
    rejected: int
    applied: ApplyResult
    connector_s: float
    state: dict[str, Any] = field(default_factory=dict)
    landing: Path = Path()
    # Records the connector rejected for breaking the contract and has not landed since;
    # it asks for them again on every sync. Until this is 0 the table is not up to date.
    held_back: int = 0


def runner_env() -> Path:
    """Return the connector environment: `FINMATCH_CONNECTOR_ENV`, else `.venv-connector`."""
    return Path(os.environ.get("FINMATCH_CONNECTOR_ENV") or ROOT / ".venv-connector")


def workspace() -> Path:
    """Return the folder where the connector runs and lands its data."""
    return project_home() / "connector"


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[int]:
    """Hold the workspace's lock; yield its descriptor (the tester inherits it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "sync.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(
                f"Another `finmatch sync` (or a tester it started) is running on {folder}; "
                "wait for it to finish."
            ) from None
        yield lock.fileno()


def _prepare(folder: Path, configuration: dict[str, str]) -> Path:
    for name in ("connector.py", "requirements.txt"):
        shutil.copyfile(CONNECTOR_DIR / name, folder / name)
    path = folder / "configuration.json"
    temp = folder / "configuration.json.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(configuration, f, indent=2)
    os.replace(temp, path)
    return path


def _pipreqs_offline(folder: Path, env_dir: Path) -> Path:
    """Return a folder whose `pipreqs` checks imports against installed packages only.

    The tester checks `requirements.txt` with pipreqs, which asks PyPI about any import
    whose package lacks a `top_level.txt` (requests has none): without network that
    costs 12 s of retries and an error in the log on every sync. `--use-local` is
    pipreqs' own switch for answering from the installed packages alone.
    """
    shims = folder / "bin"  # the tester leaves folders named bin out of its scan
    shims.mkdir(exist_ok=True)
    shim = shims / "pipreqs"
    real = env_dir / "bin" / "pipreqs"
    text = f'#!/bin/sh\nexec "{real}" --use-local "$@"\n'
    if not shim.exists() or shim.read_text() != text:
        shim.write_text(text)
        shim.chmod(0o755)
    return shims


def _failure(reported: str | None, lines: deque[str]) -> str:
    """Return the connector's own error message, else the tester's last lines."""
    if reported:
        return reported
    for line in reversed(lines):
        if "SEVERE" in line:
            return line.split("SEVERE", 1)[1].strip()
    return "\n".join(list(lines)[-10:])


def _terminate_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into SystemExit (so the tester is stopped too); return the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


def run_connector(
    folder: Path,
    configuration: dict[str, str],
    *,
    lock_fd: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> float:
    """Run the connector with `fivetran debug` in `folder`; return its wall time in seconds.

    Raise SyncError with the connector's message when the sync fails. The tester inherits
    `lock_fd`, so the workspace stays locked for as long as it runs, even if this process
    is killed.
    """
    env_dir = runner_env()
    fivetran = env_dir / "bin" / "fivetran"
    if not fivetran.exists():
        raise SyncError(
            f"The connector's environment is missing ({fivetran} not found). Create it with "
            "`make connector-env` (it installs the Fivetran Connector SDK from "
            "connector/runner.lock), or point FINMATCH_CONNECTOR_ENV at one."
        )
    config_path = _prepare(folder, configuration)
    env = {
        **os.environ,
        # The tester shells out to tools of its environment (pipreqs); ours comes first.
        "PATH": os.pathsep.join(
            [str(_pipreqs_offline(folder, env_dir)), str(env_dir / "bin"), os.environ["PATH"]]
        ),
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    command = [str(fivetran), "debug", str(folder), "--configuration", str(config_path)]
    # Source naming: the API's field names are already the column names.
    command += ["--naming", "SOURCE"]
    tail: deque[str] = deque(maxlen=_TAIL)
    reported: str | None = None
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        pass_fds=() if lock_fd is None else (lock_fd,),
    )
    stop = _terminate_on_sigterm()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            # The tester reports "Error: failed while executing update() error: <message>".
            if "failed while executing" in line and " error: " in line:
                reported = line.split(" error: ", 1)[1].strip()
            if on_line:
                on_line(line)
        code = proc.wait()
    except BaseException:
        # Interrupted: stop the tester; the state is at its last checkpoint.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        stop()
    if code != 0:
        raise SyncError(
            f"The connector failed: {_failure(reported, tail)}\n"
            "The next sync resumes after the last page it checkpointed "
            f"(state in {folder / 'files' / 'state.json'})."
        )
    return time.perf_counter() - started


def _attach(con: duckdb.DuckDBPyConnection, landing: Path) -> None:
    literal = "'" + str(landing).replace("'", "''") + "'"
    con.execute(f"ATTACH {literal} AS landing (READ_ONLY)")


def _landed_rows(landing: Path) -> int:
    """Return how many rows the landing file's `fpr_records` holds (0 if none)."""
    if not landing.exists():
        return 0
    con = duckdb.connect()
    try:
        _attach(con, landing)
        found = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_catalog = 'landing' AND table_schema = ? AND table_name = ?",
            [LANDING_SCHEMA, TABLE],
        ).fetchone()
        if not found or not found[0]:
            return 0
        return _count(con, f"SELECT count(*) FROM landing.{LANDING_SCHEMA}.{TABLE}")
    finally:
        con.close()


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_name = ?",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0


_LANDED = (
    f"SELECT {', '.join(COLUMN_NAMES)}, "
    f"timezone('UTC', {FIVETRAN_SYNCED}) AS {FIVETRAN_SYNCED}, "
    f"coalesce({FIVETRAN_DELETED}, FALSE) AS {FIVETRAN_DELETED} "
    f"FROM landing.{LANDING_SCHEMA}.{TABLE}"
)
# Landed rows the warehouse does not hold in that version (same key and sync time).
_CHANGED = (
    f"SELECT l.* FROM ({_LANDED}) AS l WHERE NOT EXISTS (SELECT 1 FROM {TABLE} AS w "
    f"WHERE w.{PRIMARY_KEY} = l.{PRIMARY_KEY} "
    f"AND w.{FIVETRAN_SYNCED} IS NOT DISTINCT FROM l.{FIVETRAN_SYNCED})"
)


def _pending(landing: Path, warehouse: Path) -> int | None:
    """Return how many landed rows a merge would write, read without a write lock.

    None when it cannot tell cheaply (no synced table yet, or the file is being written),
    and the apply has to look with the warehouse open for writing.
    """
    if not warehouse.exists():
        return None
    try:
        con = duckdb.connect(str(warehouse), read_only=True)
    except duckdb.Error:
        return None
    try:
        if not (_has_table(con, TABLE) and _has_table(con, SYNC_MARKER)):
            return None
        _attach(con, landing)
        return _count(con, f"SELECT count(*) FROM ({_CHANGED})")
    finally:
        con.close()


def apply_landing(landing: Path, warehouse: Path, *, replace: bool = False) -> ApplyResult:
    """Bring the warehouse's `fpr_records` up to date with the landed table.

    With `replace`, or when the warehouse has no `fpr_records` yet, the table becomes
    exactly what landed. A table that `finmatch seed` or `load` filled is replaced only
    with `replace`; otherwise SyncError says so and nothing changes. When nothing new
    landed, the warehouse is not opened for writing (a running service keeps its
    read-only hold on it).
    """
    started = time.perf_counter()
    if not _landed_rows(landing) or (not replace and _pending(landing, warehouse) == 0):
        return ApplyResult(0, 0, table_rows(warehouse) or 0, time.perf_counter() - started)
    with writer(warehouse) as con:
        _attach(con, landing)
        try:
            present = _has_table(con, TABLE)
            if present and not replace and not _has_table(con, SYNC_MARKER):
                raise SyncError(
                    f"{TABLE} in {warehouse} was filled by `finmatch seed` or `load`, not by a "
                    "sync. Run `finmatch sync --replace` to replace it with the source's "
                    "records; nothing was changed."
                )
            if not present or replace:

                def fill() -> None:
                    con.execute(create_table_sql(STAGING))
                    for col, sql_type in SYSTEM_COLUMNS.items():
                        con.execute(f"ALTER TABLE {STAGING} ADD COLUMN {col} {sql_type}")
                    con.execute(f"INSERT INTO {STAGING} {_LANDED}")

                rows = swap_in(con, fill, synced=lambda: _mark(con))
                return ApplyResult(rows, 0, rows, time.perf_counter() - started, replaced=True)
            return _merge(con, started)
        finally:
            with contextlib.suppress(duckdb.Error):
                con.execute("DETACH landing")


def _mark(con: duckdb.DuckDBPyConnection) -> None:
    """Record, in the open transaction, that a sync filled `fpr_records`."""
    con.execute(f"CREATE OR REPLACE TABLE {SYNC_MARKER} AS SELECT now() AS applied_at")


def _merge(con: duckdb.DuckDBPyConnection, started: float) -> ApplyResult:
    con.execute(f"CREATE OR REPLACE TEMP TABLE fm_changed AS {_CHANGED}")
    try:
        changed = _count(con, "SELECT count(*) FROM fm_changed")
        if not changed:
            rows = _count(con, f"SELECT count(*) FROM {TABLE}")
            return ApplyResult(0, 0, rows, time.perf_counter() - started)
        updated = _count(
            con,
            f"SELECT count(*) FROM fm_changed WHERE {PRIMARY_KEY} IN "
            f"(SELECT {PRIMARY_KEY} FROM {TABLE})",
        )
        names = ", ".join([*COLUMN_NAMES, *SYSTEM_COLUMNS])
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"DELETE FROM {TABLE} WHERE {PRIMARY_KEY} IN (SELECT {PRIMARY_KEY} FROM fm_changed)"
            )
            con.execute(f"INSERT INTO {TABLE} ({names}) SELECT {names} FROM fm_changed")
            customers.refresh(con, live_source(con))
            _mark(con)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")
        rows = _count(con, f"SELECT count(*) FROM {TABLE}")
        return ApplyResult(changed - updated, updated, rows, time.perf_counter() - started)
    finally:
        con.execute("DROP TABLE IF EXISTS fm_changed")


def held_back(state: dict[str, Any]) -> int:
    """Return how many records the connector's state holds back (rejected, not landed)."""
    entries = state.get("held_back")
    entries = entries if isinstance(entries, list) else []
    return sum(int(e.get("records") or 0) for e in entries if isinstance(e, dict))


def read_state(folder: Path) -> dict[str, Any]:
    """Return the connector's last checkpointed state ({} before the first sync)."""
    path = folder / "files" / "state.json"
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text() or "{}")
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def sync(
    warehouse: Path,
    configuration: dict[str, str],
    *,
    full: bool = False,
    replace: bool = False,
    folder: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> SyncResult:
    """Run the connector, then apply what it landed to the warehouse at `warehouse`.

    `full` starts over: the landing file and state are dropped, every record is fetched
    again and, once the connector has fetched them all, `fpr_records` becomes exactly
    them (records gone from the source go too). Until that run completes, the warehouse
    keeps its rows; a failed full sync continues with the next `sync`.
    """
    folder = folder or workspace()
    with _exclusive(folder) as lock_fd:
        landing = folder / "files" / "warehouse.db"
        full_pending = folder / "full-sync.pending"
        if full:
            shutil.rmtree(folder / "files", ignore_errors=True)
            full_pending.touch()
        try:
            connector_s = run_connector(folder, configuration, lock_fd=lock_fd, on_line=on_line)
        except SyncError as failed:
            if full_pending.exists():
                raise SyncError(
                    f"{failed}\nThe full sync continues with the next `finmatch sync`; "
                    f"{TABLE} keeps its rows until it completes."
                ) from failed
            # What the pages before the failure landed is committed, as in Fivetran.
            try:
                done = apply_landing(landing, warehouse, replace=replace)
            except (SyncError, WarehouseBusy) as refused:
                raise SyncError(f"{failed}\nNothing was applied: {refused}") from failed
            note = (
                f"{done.written:,} records of the pages checkpointed before the failure were "
                f"applied to {TABLE}."
                if done.written
                else f"{TABLE} is unchanged."
            )
            raise SyncError(f"{failed}\n{note}") from failed
        state = read_state(folder)
        # Every successful run of the connector checkpoints its own counts.
        last = state.get("last_sync")
        last = last if isinstance(last, dict) else {}
        applied = apply_landing(landing, warehouse, replace=replace or full_pending.exists())
        full_pending.unlink(missing_ok=True)
    return SyncResult(
        fetched=int(last.get("records", 0)),
        pages=int(last.get("pages", 0)),
        rejected=int(last.get("rejected", 0)),
        applied=applied,
        connector_s=connector_s,
        state=state,
        landing=landing,
        held_back=held_back(state),
    )
