"""Retention: old threads go with their checkpoints and history; live and recent ones stay."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest

from graphs.context import Context
from service.cli import main
from service.retention import RetentionSettings, prune
from service.runs import open_checkpointer, run_focus
from service.store import RunRecord, RunStore

FOCUS = "financial-impact"


def _run(path: Path, ck: str, model: str = "offline") -> str:
    ctx = Context(warehouse=f"duckdb:///{path}", model=model, model_retries=0)
    return asyncio.run(run_focus(FOCUS, ctx, checkpoints=ck, tracing=False)).thread_id


def _record(store: RunStore, thread_id: str, status: str) -> None:
    store.create(
        RunRecord(
            id=f"run-{thread_id}",
            thread_id=thread_id,
            focus_area=FOCUS,
            model="offline",
            filters={},
            question="",
            status=status,
            created_at=time.time(),
        )
    )
    store.append(f"run-{thread_id}", "status", {"status": status})


def test_threads_go_after_their_retention_with_their_history(
    large_path: Path, tmp_path: Path
) -> None:
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    finished = _run(large_path, ck)
    resumable = _run(large_path, ck, "import:tests.graphs.scripted:failing")
    live = _run(large_path, ck, "import:tests.graphs.scripted:failing")
    store = RunStore(tmp_path / "service.sqlite")
    _record(store, finished, "succeeded")
    _record(store, resumable, "failed")
    _record(store, live, "running")
    settings = RetentionSettings(finmatch_retention_days=30, finmatch_resumable_days=90)
    now = datetime.datetime.now(datetime.UTC)

    async def prune_at(days: float, dry_run: bool = False) -> list[str]:
        async with open_checkpointer(ck) as saver:
            done = await prune(
                saver, store, settings, now=now + datetime.timedelta(days=days), dry_run=dry_run
            )
        return sorted(t.thread_id for t in done.threads)

    async def held() -> set[str]:
        async with open_checkpointer(ck) as saver:
            return {
                t
                for t in (finished, resumable, live)
                if await saver.aget_tuple({"configurable": {"thread_id": t}}) is not None
            }

    assert asyncio.run(prune_at(10)) == []
    assert asyncio.run(prune_at(31, dry_run=True)) == [finished]
    assert asyncio.run(held()) == {finished, resumable, live}  # a dry run deletes nothing
    assert asyncio.run(prune_at(31)) == [finished]
    assert asyncio.run(held()) == {resumable, live}
    assert store.get(f"run-{finished}") is None and store.events(f"run-{finished}") == []
    assert store.get(f"run-{resumable}") is not None
    assert asyncio.run(prune_at(91)) == [resumable]
    assert asyncio.run(held()) == {live}  # a running run's thread is never pruned
    assert store.get(f"run-{live}") is not None
    store.close()


def test_the_prune_command(
    large_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FINMATCH_HOME", str(tmp_path / "home"))
    thread = _run(large_path, "")
    assert main(["prune"]) == 0
    assert "deleted 0 threads; kept 1" in capsys.readouterr().out
    assert main(["prune", "--retention-days", "0.0000001", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete thread {thread} (finished" in out and "would delete 1 threads" in out
    assert main(["prune", "--retention-days", "0.0000001"]) == 0
    assert "deleted 1 threads; kept 0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["prune", "--retention-days", "-3"])
    assert bad.value.code == 2
    assert "'-3' is not a number of days between 0 and 36500" in capsys.readouterr().err
