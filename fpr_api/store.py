"""The source API's records: a DuckDB file filled by the same generator as `finmatch seed`.

Records are served in `(last_updated_epoch, record_id)` order and a cursor is the position
of the last record a page held, so a cursor kept after a sync asks for exactly the records
written since. A change (`change()`) gives every record it touches an epoch newer than any
the store holds, which puts it after every cursor handed out before.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tools import generator
from tools.ingest import records_in
from tools.schema import COLUMNS, TABLE, create_table_sql

# Dates leave the store as ISO text, the way the API contract shows them.
_SELECT = ", ".join(
    f"strftime({c.name}, '%Y-%m-%d') AS {c.name}" if c.type == "date" else c.name for c in COLUMNS
)
_ORDER = "last_updated_epoch, record_id"
_STATUSES_OPEN = ("Pending", "In Progress")
ROW_GROUP_SIZE = 16_384


class CursorError(ValueError):
    """A cursor this store cannot continue from; the message says why."""


@dataclass(frozen=True)
class Position:
    """Where a page starts: after the record with this epoch and id, in this dataset.

    The dataset is a random number drawn when the records were generated, so a cursor
    kept from before a regeneration is refused instead of silently skipping records.
    """

    dataset: int
    epoch: int
    record_id: str

    def encode(self) -> str:
        """Return the opaque cursor text for this position."""
        raw = json.dumps([self.dataset, self.epoch, self.record_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        """Return the position a cursor names; raise CursorError if it is not one of ours."""
        refused = CursorError(
            f"cursor {cursor!r} is not one this API issued: pass the next_cursor of an "
            "earlier page, or leave cursor out to start from the first record"
        )
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            dataset, epoch, record_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError) as e:
            raise refused from e
        numbers = (dataset, epoch)
        if any(not isinstance(n, int) or isinstance(n, bool) for n in numbers):
            raise refused
        if not isinstance(record_id, str):
            raise refused
        return cls(dataset, epoch, record_id)


@dataclass(frozen=True)
class Page:
    """One page of records and where the next one starts."""

    records: list[dict[str, Any]]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class Change:
    """What `SourceStore.change` did."""

    updated: int
    added: int
    epoch: int
    total: int


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block in one transaction; drop the generator's temporary ids after it."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("DROP TABLE IF EXISTS fm_ids")


class SourceStore:
    """The records behind the source API, in a DuckDB file this process owns."""

    def __init__(self, path: Path) -> None:
        """Open the store at `path` (see `open` to fill a new one)."""
        self.path = Path(path)
        self._db = duckdb.connect()
        literal = "'" + str(self.path).replace("'", "''") + "'"
        # Small row groups: a page's cursor filter then skips all but ~16 K rows by zone
        # map (at 1 M records a page costs 14 ms instead of 43 ms with the default 122 K).
        self._db.execute(f"ATTACH {literal} AS source (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        self._con = self._cursor()
        self._write = threading.Lock()
        self.dataset = 0

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """Return a connection of its own (one per thread) to the store's database."""
        con = self._db.cursor()
        con.execute("USE source")
        return con

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        records: int = generator.DEFAULT_ROWS,
        seed: int = generator.DEFAULT_SEED,
        reset: bool = False,
    ) -> SourceStore:
        """Open the store at `path`, generating `records` records first if it has none."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if reset and path.exists():
            path.unlink()
            Path(f"{path}.wal").unlink(missing_ok=True)
        store = cls(path)
        if store.count() is None:
            store._fill(records, seed)
        row = store._con.execute("SELECT value FROM source_meta WHERE key = 'dataset'").fetchone()
        store.dataset = int(row[0]) if row else 0
        return store

    def _fill(self, records: int, seed: int) -> None:
        con = self._con
        for statement in generator.setup_sql(records, seed):
            con.execute(statement)
        select = generator.select_sql(records, seed)
        with _transaction(con):
            con.execute(create_table_sql(TABLE))
            # Stored in serving order, so the epoch zone maps let a cursor skip what is behind it.
            con.execute(f"INSERT INTO {TABLE} SELECT * FROM ({select}) ORDER BY {_ORDER}")
            con.execute("CREATE TABLE source_meta (key VARCHAR PRIMARY KEY, value BIGINT)")
            con.execute(
                "INSERT INTO source_meta VALUES ('seed', ?), ('changes', 0), ('dataset', ?)",
                [seed, random.SystemRandom().randrange(2**48)],
            )
        con.execute("CHECKPOINT")

    def close(self) -> None:
        """Close the file."""
        self._con.close()
        self._db.close()

    def count(self) -> int | None:
        """Return how many records the store holds; None when it has no table yet."""
        return records_in(self._cursor())

    def page(self, cursor: str | None, size: int) -> Page:
        """Return up to `size` records after `cursor` (from the start when None)."""
        con = self._cursor()
        where, params = "TRUE", []
        if cursor:
            at = Position.decode(cursor)
            if at.dataset != self.dataset:
                raise CursorError(
                    f"cursor {cursor!r} belongs to records this API has since generated anew: "
                    "leave cursor out to start again from the first record (a full re-sync)"
                )
            # The first condition is redundant but lets DuckDB skip row groups by zone map.
            where = (
                "last_updated_epoch >= ? AND "
                "(last_updated_epoch > ? OR (last_updated_epoch = ? AND record_id > ?))"
            )
            params = [at.epoch, at.epoch, at.epoch, at.record_id]
        rel = con.execute(
            f"SELECT {_SELECT} FROM {TABLE} WHERE {where} ORDER BY {_ORDER} LIMIT {size + 1}",
            params,
        )
        names = [d[0] for d in rel.description or []]
        rows = rel.fetchall()
        has_more = len(rows) > size
        records = [dict(zip(names, row, strict=True)) for row in rows[:size]]
        if records:
            last = records[-1]
            next_cursor: str | None = Position(
                self.dataset, int(last["last_updated_epoch"]), str(last["record_id"])
            ).encode()
        else:
            next_cursor = cursor
        return Page(records, next_cursor, has_more)

    def newest_epoch(self) -> int:
        """Return the greatest `last_updated_epoch` in the store."""
        row = self._cursor().execute(f"SELECT max(last_updated_epoch) FROM {TABLE}").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def change(self, *, update: int = 0, add: int = 0, seed: int | None = None) -> Change:
        """Update `update` existing records and add `add` new ones, all with a newer epoch.

        Updated records move on as a bank's would between syncs: balances, satisfaction,
        churn and score drift, and some open recommendations are accepted (with a sale)
        or declined. Added records are new recommendations made to new customers, drawn
        by the generator. `seed` makes the choice of records and the drift repeatable.
        """
        if update < 0 or add < 0:
            raise ValueError(f"update and add must not be negative; got {update} and {add}")
        seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
        with self._write:
            con = self._cursor()
            total = self.count() or 0
            if update > total:
                raise ValueError(f"cannot update {update} records: the source holds {total}")
            epoch = max(int(time.time()), self.newest_epoch() + 1)
            with _transaction(con):
                if update:
                    self._update(con, update, seed, epoch)
                if add:
                    self._add(con, add, epoch)
        return Change(update, add, epoch, total + add)

    @staticmethod
    def _update(con: duckdb.DuckDBPyConnection, n: int, seed: int, epoch: int) -> None:
        # Uniform draws per record from (record, seed, draw), as the generator draws.
        def u(k: int) -> str:
            return f"((hash(record_id || '-{seed}-{k}') >> 11)::DOUBLE / 9007199254740992.0)"

        open_list = ", ".join(f"'{s}'" for s in _STATUSES_OPEN)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE fm_pick AS SELECT record_id FROM {TABLE} "
            f"ORDER BY hash(record_id || '-{seed}') LIMIT {n}"
        )
        status = (
            f"CASE WHEN product_recommendation_status IN ({open_list}) AND {u(1)} < 0.35 "
            f"THEN 'Accepted' WHEN product_recommendation_status IN ({open_list}) "
            f"AND {u(1)} < 0.6 THEN 'Declined' ELSE product_recommendation_status END"
        )
        accepted = f"product_recommendation_status <> 'Accepted' AND ({status}) = 'Accepted'"
        changed = {
            "account_balance": f"round(account_balance * (0.9 + 0.2 * {u(2)}), 2)",
            "customer_satisfaction_score": "round(greatest(0.01, least(0.99, "
            f"customer_satisfaction_score + 0.1 * ({u(3)} - 0.5))), 6)",
            "customer_churn_probability": "round(greatest(0.01, least(0.99, "
            f"customer_churn_probability + 0.1 * ({u(4)} - 0.5))), 6)",
            "recommendation_score": "round(greatest(0.0, least(1.0, "
            f"recommendation_score + 0.05 * ({u(5)} - 0.5))), 6)",
            "product_sales_amount": f"CASE WHEN {accepted} THEN round(1000 + 9000 * {u(6)}, 2) "
            "ELSE product_sales_amount END",
            "product_sales_date": f"CASE WHEN {accepted} THEN product_recommendation_date + 7 "
            "ELSE product_sales_date END",
            "product_recommendation_status": status,
            "last_updated_epoch": str(epoch),
        }
        cols = ", ".join(f"{changed.get(c.name, c.name)} AS {c.name}" for c in COLUMNS)
        # Delete and insert rather than update in place: the new versions land in new row
        # groups, so the old ones keep zone maps a cursor can skip.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE fm_new AS SELECT {cols} FROM {TABLE} "
            "WHERE record_id IN (SELECT record_id FROM fm_pick)"
        )
        con.execute(f"DELETE FROM {TABLE} WHERE record_id IN (SELECT record_id FROM fm_pick)")
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM fm_new ORDER BY record_id")
        con.execute("DROP TABLE fm_new")
        con.execute("DROP TABLE fm_pick")

    @staticmethod
    def _add(con: duckdb.DuckDBPyConnection, n: int, epoch: int) -> None:
        row = con.execute("SELECT value FROM source_meta WHERE key = 'changes'").fetchone()
        batch = int(row[0]) + 1 if row else 1
        base = con.execute("SELECT value FROM source_meta WHERE key = 'seed'").fetchone()
        # A seed per batch gives new record ids (they hash the seed); customers are numbered
        # after the existing ones, so an added record is a new customer's recommendation.
        seed = (int(base[0]) if base else 0) + batch * 7919
        seed = seed % (generator.MAX_SEED + 1)
        first = con.execute(
            f"SELECT coalesce(max(CAST(substr(customer_id, 6) AS BIGINT)), -1) + 1 FROM {TABLE}"
        ).fetchone()
        offset = int(first[0]) if first else 0
        for statement in generator.setup_sql(n, seed):
            con.execute(statement)
        select = generator.select_sql(n, seed)
        number = f"(CAST(substr(g.customer_id, 6) AS BIGINT) + {offset})"
        replaced = {
            "customer_id": f"printf('CUST_%06d', {number})",
            "customer_name": f"'Customer ' || ({number} + 1)::VARCHAR",
            "customer_email": f"'customer' || ({number} + 1)::VARCHAR || '@example.com'",
            "last_updated_epoch": str(epoch),
        }
        cols = ", ".join(f"{replaced.get(c.name, 'g.' + c.name)} AS {c.name}" for c in COLUMNS)
        con.execute(f"INSERT INTO {TABLE} SELECT {cols} FROM ({select}) AS g")
        con.execute("UPDATE source_meta SET value = ? WHERE key = 'changes'", [batch])
