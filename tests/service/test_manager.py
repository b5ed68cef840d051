"""The run manager's event log: live followers read memory, and see what the store holds."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from graphs.resources import close_all
from service.manager import RunManager
from service.store import Event, RunStore


def test_followers_of_a_live_run_see_exactly_the_stored_events(
    seeded_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "fpr.duckdb"
    shutil.copy(seeded_path, copy)
    store = RunStore(tmp_path / "service.sqlite")

    async def scenario() -> tuple[list[list[Event]], list[Event], list[int]]:
        manager = RunManager(
            store,
            warehouse=f"duckdb:///{copy}",
            checkpoints=f"sqlite:///{tmp_path / 'ck.sqlite'}",
            tracing=False,
        )
        await manager.start()
        try:
            run = await manager.submit("financial-impact", "offline", {})
            live_sizes: list[int] = []

            async def follow(after: int) -> list[Event]:
                seen = []
                async for event in manager.follow(run.id, after):
                    assert event is not None
                    live_sizes.append(len(manager._log.get(run.id, [])))
                    seen.append(event)
                return seen

            followed = await asyncio.gather(follow(0), follow(0), follow(2))
            stored = await manager.io(store.events, run.id, 0)
            return list(followed), stored, live_sizes
        finally:
            await manager.stop()

    try:
        (first, second, late), stored, live_sizes = asyncio.run(scenario())
    finally:
        store.close()
        close_all()
    assert first == second == stored and late == stored[2:]
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert stored[-1].type == "end" and stored[-1].data["status"] == "succeeded"
    assert max(live_sizes) > 1  # followers were served from the live log


def test_the_log_keeps_each_step_once_and_old_stores_gain_the_key(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "service.sqlite"
    old = sqlite3.connect(path)  # a store from before steps were keyed
    old.executescript(
        "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,"
        " data TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (run_id, seq));"
    )
    old.close()
    store = RunStore(path)
    step = {"focus_area": "financial-impact", "step": "Banking Financial Data Integration"}
    first = store.append("r", "step_finish", {**step, "detail": "750 recommendations"})
    assert first is not None and first.seq == 1
    assert store.append("r", "step_finish", {**step, "detail": "again", "kept": True}) is None
    assert store.append("r", "step_start", step) is not None  # other events are not keyed
    assert store.append("other", "step_finish", step) is not None
    assert [e.data["detail"] for e in store.events("r", 0, ("step_finish",))] == [
        "750 recommendations"
    ]
    store.close()
