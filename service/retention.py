"""Retention: prune old threads, their checkpoints and their run history.

Checkpoints exist so a run can be resumed; a finished run's result is in its report and
the service's history. So a thread whose run finished is kept `retention_days` after its
last activity, a thread that can still be resumed (failed, cancelled, stopped midway)
`resumable_days`, and then both go: every checkpoint of the thread (its subgraphs'
too) and, in the service's store, its runs and their events. Runs that are queued or
running are never touched, and saved report files stay where they are.

Threads are listed through the saver's API (on SQLite with one query of its
`checkpoints` table instead), and what a thread holds is read through it too.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.store import TERMINAL, RunStore
from tools.settings import MAX_DAYS

# The channels a run writes last: once written, the run has nothing left to resume.
FINAL_CHANNELS = ("report", "summary")


class RetentionSettings(BaseSettings):
    """How long threads are kept after their last activity."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", allow_inf_nan=False)

    finmatch_retention_days: float = Field(
        30, gt=0, le=MAX_DAYS, description="Days a finished run's thread and history are kept"
    )
    finmatch_resumable_days: float = Field(
        90, gt=0, le=MAX_DAYS, description="Days a thread that can still be resumed is kept"
    )


@dataclass
class Thread:
    """What retention knows of one thread."""

    thread_id: str
    last_active: datetime.datetime
    finished: bool
    live: bool = False  # a run of it is queued or running


@dataclass
class PruneResult:
    """What a prune removed (or, dry, would remove)."""

    threads: list[Thread] = field(default_factory=list)
    kept: int = 0
    runs: int = 0


async def thread_ids(saver: BaseCheckpointSaver[Any]) -> list[str]:
    """Return the ids of every thread the checkpointer holds."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if isinstance(saver, AsyncSqliteSaver):  # one query instead of reading every checkpoint
        await saver.setup()
        async with saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints") as cur:
            return [str(r[0]) for r in await cur.fetchall()]
    seen: dict[str, None] = {}
    async for found in saver.alist(None):
        seen.setdefault(str(found.config["configurable"]["thread_id"]), None)
    return list(seen)


async def describe(saver: BaseCheckpointSaver[Any], thread_id: str) -> Thread | None:
    """Return when a thread was last active and whether its run finished."""
    found = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    if found is None:
        return None
    checkpoint = found.checkpoint
    versions = checkpoint.get("channel_versions", {})
    return Thread(
        thread_id=thread_id,
        last_active=datetime.datetime.fromisoformat(checkpoint["ts"]),
        finished=any(c in versions for c in FINAL_CHANNELS),
    )


async def prune(
    saver: BaseCheckpointSaver[Any],
    store: RunStore | None,
    settings: RetentionSettings,
    *,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete the threads past their retention, with their history; return what went."""
    now = now or datetime.datetime.now(datetime.UTC)
    keep_finished = datetime.timedelta(days=settings.finmatch_retention_days)
    keep_resumable = datetime.timedelta(days=settings.finmatch_resumable_days)
    live = set()
    if store is not None:
        live = {r.thread_id for r in store.with_status("queued", "running")}
    result = PruneResult()
    for thread_id in await thread_ids(saver):
        thread = await describe(saver, thread_id)
        if thread is None:
            continue
        thread.live = thread_id in live
        limit = keep_finished if thread.finished else keep_resumable
        if thread.live or now - thread.last_active < limit:
            result.kept += 1
            continue
        result.threads.append(thread)
        if not dry_run:
            await saver.adelete_thread(thread_id)
            if store is not None:
                result.runs += store.delete_thread(thread_id, TERMINAL)
    return result


def store_at(path: Path) -> RunStore | None:
    """Return the service's run store at `path`, if there is one."""
    return RunStore(path) if path.exists() else None
