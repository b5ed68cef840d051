"""The service's run history and event log, in a SQLite file.

Every run the service accepts is a row of `runs` (what was asked, its status, its result)
and every event it emitted a row of `events`, numbered per run from 1. Both survive a
restart: the history lists old runs, and a client reading a run's events after a restart
gets the whole story. All methods are blocking; the service calls them from one worker
thread, so writes land in the order they were made and a read sees every earlier write.

A step's `step_finish` is kept once per run (keyed by its focus area and step): a resumed
run announces again the steps its checkpoints hold, and only those the log lacks (lost
when the process died) are added.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from graphs.steps import step_key

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(Status)
TERMINAL = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY,
  thread_id TEXT NOT NULL,
  focus_area TEXT NOT NULL,
  model TEXT NOT NULL,
  filters TEXT NOT NULL,
  question TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at REAL NOT NULL,
  started_at REAL,
  finished_at REAL,
  attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  trace_id TEXT NOT NULL DEFAULT '',
  result TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
  run_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  type TEXT NOT NULL,
  data TEXT NOT NULL,
  at REAL NOT NULL,
  step TEXT,
  PRIMARY KEY (run_id, seq)
);
"""
# Stores made before steps were keyed get the column; the index works on both.
_MIGRATIONS = (("events", "step", "ALTER TABLE events ADD COLUMN step TEXT"),)
_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS events_step ON events (run_id, step) WHERE step IS NOT NULL;
"""


@dataclass
class RunRecord:
    """One run as the service keeps it."""

    id: str
    thread_id: str
    focus_area: str
    model: str
    filters: dict[str, Any]
    question: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str = ""
    trace_id: str = ""
    result: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Event:
    """One event of a run: its number within the run, type, payload and time."""

    seq: int
    type: str
    data: dict[str, Any]
    at: float


_COLUMNS = (
    "id, thread_id, focus_area, model, filters, question, status, created_at, started_at, "
    "finished_at, attempts, error, trace_id"
)


def _record(row: sqlite3.Row, result: str | None = None) -> RunRecord:
    return RunRecord(
        id=row["id"],
        thread_id=row["thread_id"],
        focus_area=row["focus_area"],
        model=row["model"],
        filters=json.loads(row["filters"]),
        question=row["question"],
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        error=row["error"],
        trace_id=row["trace_id"],
        result=json.loads(result) if result else None,
    )


class RunStore:
    """Runs and their events in a SQLite file (WAL; safe to open from one process)."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the store at `path`."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            for table, column, ddl in _MIGRATIONS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(ddl)
            self._db.executescript(_INDEXES)
        self._seq: dict[str, int] = {}

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def ping(self) -> None:
        """Raise if the store cannot be read."""
        with self._lock:
            self._db.execute("SELECT count(*) FROM runs").fetchone()

    # -- runs ----------------------------------------------------------------------
    def create(self, run: RunRecord) -> None:
        """Add a new run."""
        with self._lock:
            self._db.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.thread_id,
                    run.focus_area,
                    run.model,
                    json.dumps(run.filters),
                    run.question,
                    run.status,
                    run.created_at,
                    run.started_at,
                    run.finished_at,
                    run.attempts,
                    run.error,
                    run.trace_id,
                ),
            )

    def update(self, run_id: str, fields: dict[str, Any]) -> None:
        """Set some fields of a run (`result` is stored as JSON)."""
        fields = dict(fields)
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))

    def get(self, run_id: str, with_result: bool = True) -> RunRecord | None:
        """Return a run, or None."""
        cols = f"{_COLUMNS}, result" if with_result else _COLUMNS
        with self._lock:
            row = self._db.execute(f"SELECT {cols} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return _record(row, row["result"] if with_result else None)

    def history(
        self,
        *,
        focus_area: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Return runs newest first, filtered; `before` is the keyset of the last one seen."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        for column, value in (("focus_area", focus_area), ("model", model), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        sql = (
            f"SELECT {_COLUMNS} FROM runs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_record(r) for r in rows]

    def delete_thread(self, thread_id: str, statuses: tuple[str, ...]) -> int:
        """Delete the runs of a thread in any of `statuses`, with their events; return how many."""
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    f"SELECT id FROM runs WHERE thread_id = ? AND status IN ({marks})",
                    (thread_id, *statuses),
                ).fetchall()
            ]
            for run_id in ids:
                self._db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
                self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                self._seq.pop(run_id, None)
        return len(ids)

    def with_status(self, *statuses: str) -> list[RunRecord]:
        """Return the runs in any of `statuses`, oldest first."""
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE status IN ({marks}) ORDER BY created_at, id",
                statuses,
            ).fetchall()
        return [_record(r) for r in rows]

    # -- events --------------------------------------------------------------------
    def append(self, run_id: str, type_: str, data: dict[str, Any]) -> Event | None:
        """Append an event to a run's log; return it as `events` would read it back.

        A `step_finish` of a step the log already holds is not added again: None.
        """
        text = json.dumps(data, default=str)
        at = time.time()
        step = step_key(data) if type_ == "step_finish" else None
        with self._lock:
            if (
                step is not None
                and self._db.execute(
                    "SELECT 1 FROM events WHERE run_id = ? AND step = ?", (run_id, step)
                ).fetchone()
            ):
                return None
            seq = self._seq.get(run_id)
            if seq is None:
                row = self._db.execute(
                    "SELECT COALESCE(max(seq), 0) FROM events WHERE run_id = ?", (run_id,)
                ).fetchone()
                seq = int(row[0])
            seq += 1
            self._db.execute(
                "INSERT INTO events (run_id, seq, type, data, at, step) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, seq, type_, text, at, step),
            )
            self._seq[run_id] = seq
        return Event(seq, type_, json.loads(text), at)

    def events(self, run_id: str, after: int = 0, types: tuple[str, ...] = ()) -> list[Event]:
        """Return a run's events numbered above `after` (only `types` if given), in order."""
        sql = "SELECT seq, type, data, at FROM events WHERE run_id = ? AND seq > ?"
        args: list[Any] = [run_id, after]
        if types:
            sql += f" AND type IN ({', '.join('?' for _ in types)})"
            args += list(types)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [Event(r["seq"], r["type"], json.loads(r["data"]), r["at"]) for r in rows]
