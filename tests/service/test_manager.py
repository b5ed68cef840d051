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
