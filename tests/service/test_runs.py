"""Durable runs: failure, cancellation and a killed process all resume where they stopped.

The failing and hanging models stand in for a hosted LLM (none can run here); the graphs,
the SQLite checkpointer, the warehouse and MLflow are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from graphs.areas import OPTIMIZATION
from graphs.context import Context
from service.runs import ThreadError, run_focus
from tests.conftest import forget_kept_results
from tests.graphs import scripted
from tests.graphs.scripted import ScriptedChatModel, answer, tool_call

ROOT = Path(__file__).resolve().parents[2]
FOCUS = "optimization-opportunities"
STEPS = [f"{FOCUS}:{s.name}" for s in OPTIMIZATION.steps]


def ctx(path: Path, model: str = "offline") -> Context:
    return Context(warehouse=f"duckdb:///{path}", model=model, model_retries=0)


def test_a_failed_step_resumes_without_redoing_finished_ones(
    large_path: Path, tmp_path: Path
) -> None:
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    failed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path, "import:tests.graphs.scripted:failing"),
            checkpoints=ck,
            tracing=False,
        )
    )
    assert failed.status == "failed"
    assert failed.error.startswith("ModelError: Model 'import:tests.graphs.scripted:failing'")
    assert "503" in failed.error and "can be resumed" in failed.error
    assert failed.steps_run == STEPS[:5]

    resumed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path),
            thread_id=failed.thread_id,
            resume=True,
            checkpoints=ck,
            tracing=False,
        )
    )
    assert resumed.status == "succeeded"
    assert resumed.steps_run == STEPS[4:]
    assert [s["step"] for s in resumed.output["steps"]] == [s.name for s in OPTIMIZATION.steps]
    assert resumed.output["report"]["model"] == "offline"


def test_threads_are_not_reused_by_mistake(large_path: Path, tmp_path: Path) -> None:
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    with pytest.raises(ThreadError, match="no run to resume"):
        asyncio.run(
            run_focus(
                FOCUS, ctx(large_path), thread_id="t-1", resume=True, checkpoints=ck, tracing=False
            )
        )
    done = asyncio.run(
        run_focus(FOCUS, ctx(large_path), thread_id="t-1", checkpoints=ck, tracing=False)
    )
    assert done.status == "succeeded" and done.steps_run == STEPS
    with pytest.raises(ThreadError, match="already has a run"):
        asyncio.run(
            run_focus(FOCUS, ctx(large_path), thread_id="t-1", checkpoints=ck, tracing=False)
        )
    again = asyncio.run(
        run_focus(
            FOCUS, ctx(large_path), thread_id="t-1", resume=True, checkpoints=ck, tracing=False
        )
    )
    assert again.status == "succeeded" and again.steps_run == []
    assert again.output["report"] == done.output["report"]


def test_a_cancelled_run_stays_resumable(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    marker = tmp_path / "marker"
    monkeypatch.setenv("FINMATCH_TEST_MARKER", str(marker))
    monkeypatch.setenv("FINMATCH_TEST_GATE", str(tmp_path / "gate"))  # never opened

    async def cancel_in_the_model_step() -> None:
        # The gated model waits inside the model step until its gate opens: the cancel
        # lands there, after four finished steps, whatever the machine's load.
        task = asyncio.create_task(
            run_focus(
                FOCUS,
                ctx(large_path, "import:tests.graphs.scripted:gated"),
                thread_id="t-c",
                checkpoints=ck,
                tracing=False,
            )
        )
        while not marker.exists():
            assert not task.done(), task
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_in_the_model_step())
    resumed = asyncio.run(
        run_focus(
            FOCUS, ctx(large_path), thread_id="t-c", resume=True, checkpoints=ck, tracing=False
        )
    )
    assert resumed.status == "succeeded"
    assert resumed.steps_run == STEPS[4:]
    assert [s["step"] for s in resumed.output["steps"]] == [s.name for s in OPTIMIZATION.steps]


def _starts(stderr: str) -> list[str]:
    return [line[2:].replace(": ", ":", 1) for line in stderr.splitlines() if line.startswith("> ")]


def test_a_killed_process_resumes_in_a_new_one(large_path: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FINMATCH_HOME": str(tmp_path / "home"),
        "FINMATCH_TEST_MARKER": str(tmp_path / "marker"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    finmatch = str(Path(sys.executable).parent / "finmatch")
    common = [
        "analyze",
        "--focus",
        FOCUS,
        "--thread",
        "t-k",
        "--no-trace",
        "--warehouse",
        f"duckdb:///{large_path}",
    ]
    first = subprocess.Popen(
        [finmatch, *common, "--model", "import:tests.graphs.scripted:hanging"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the run never reached the model step"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    _, err1 = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert _starts(err1) == STEPS[:5]

    second = subprocess.run(
        [finmatch, *common, "--resume", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stderr
    assert _starts(second.stderr) == STEPS[4:]
    report = json.loads(second.stdout)
    assert report["thread_id"] == "t-k" and report["focus_area"] == FOCUS
    assert report["headline"].startswith("Small Business customers offered Personal Loan")


def test_a_run_records_one_trace_with_step_query_model_and_tool_spans(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    scripted.CURRENT.append(
        ScriptedChatModel(
            replies=[
                AIMessage(
                    "", tool_calls=[tool_call("run_catalog_metric", {"metric_id": "revenue"}, "c1")]
                ),
                answer(
                    "Small Business lags [OPT-2].", [(t, "x") for t in OPTIMIZATION.sections], []
                ),
            ]
        )
    )
    forget_kept_results(large_path)  # earlier runs kept these metrics: this one is to query
    try:
        result = asyncio.run(
            run_focus(
                FOCUS,
                ctx(large_path, "import:tests.graphs.scripted:current"),
                thread_id="t-trace",
                checkpoints=f"sqlite:///{tmp_path / 'ck.sqlite'}",
                tracing=True,
            )
        )
    finally:
        scripted.CURRENT.clear()
    assert result.status == "succeeded" and result.trace_id
    trace = mlflow.get_trace(result.trace_id)
    assert trace is not None
    names = [s.name for s in trace.data.spans]
    assert names[0] == f"finmatch:{FOCUS}"
    for step in OPTIMIZATION.steps:
        assert step.name in names
    assert {"query:kpis", "query:acceptance_rates", "model", "tool:run_catalog_metric"} <= set(
        names
    )
    assert names.count("model") == 2
    assert trace.info.tags["thread_id"] == "t-trace"
    query = next(s for s in trace.data.spans if s.name == "query:kpis")
    assert "FROM fpr_records" in query.outputs["sql"]
    assert query.outputs["cached"] is False


def test_postgres_checkpoints_resume_a_failed_run(large_path: Path, postgres_url: str) -> None:
    failed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path, "import:tests.graphs.scripted:failing"),
            checkpoints=postgres_url,
            tracing=False,
        )
    )
    assert failed.status == "failed" and failed.steps_run == STEPS[:5]
    resumed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path),
            thread_id=failed.thread_id,
            resume=True,
            checkpoints=postgres_url,
            tracing=False,
        )
    )
    assert resumed.status == "succeeded" and resumed.steps_run == STEPS[4:]


class Killed(BaseException):
    """Stands in for the process dying at an exact point (nothing after it runs)."""


def _crashing_saver(at: str, n: int, died: asyncio.Event, gone: asyncio.Event) -> Any:
    """A SQLite checkpointer whose process dies around step `n`.

    'before-writes': the step returned but its writes never reach the file (the saver
    waits until the run is stopped, then returns without writing). 'after-checkpoint':
    the checkpoint holding step `n` is saved, then the run dies at once.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    def holds_step(values: Any) -> bool:
        return any(s.get("index") == n for s in values or [])

    class Crashing(AsyncSqliteSaver):
        async def aput_writes(self, config: Any, writes: Any, task_id: str, *a: Any) -> None:
            if at == "before-writes" and any(c == "steps" and holds_step(v) for c, v in writes):
                died.set()
                await gone.wait()
                return
            await super().aput_writes(config, writes, task_id, *a)

        async def aput(self, config: Any, checkpoint: Any, metadata: Any, versions: Any) -> Any:
            done = await super().aput(config, checkpoint, metadata, versions)
            if at == "after-checkpoint" and holds_step(checkpoint["channel_values"].get("steps")):
                died.set()
                raise Killed
            return done

    return Crashing


@pytest.mark.parametrize("at", ["before-writes", "after-checkpoint", "event-lost"])
@pytest.mark.parametrize("boundary", range(1, len(STEPS) + 1))
def test_a_kill_at_any_step_boundary_redoes_nothing_and_records_each_step_once(
    large_path: Path, tmp_path: Path, at: str, boundary: int
) -> None:
    path = tmp_path / "ck.sqlite"
    recorded: list[dict[str, Any]] = []  # what a store kept: events up to the kill

    def on_event(event: dict[str, Any]) -> None:
        if at == "event-lost" and event["type"] == "step_finish" and event["index"] == boundary:
            raise Killed  # the step is checkpointed; its event never reaches the store
        recorded.append(event)

    async def first() -> None:
        died, gone = asyncio.Event(), asyncio.Event()
        saver_class = _crashing_saver(at, boundary, died, gone)
        async with saver_class.from_conn_string(str(path)) as saver:
            run = asyncio.create_task(
                run_focus(
                    FOCUS,
                    ctx(large_path),
                    thread_id="t",
                    on_event=on_event,
                    saver=saver,
                    tracing=False,
                )
            )
            stopped = asyncio.create_task(died.wait())
            await asyncio.wait([run, stopped], return_when=asyncio.FIRST_COMPLETED)
            run.cancel()  # the process is gone: nothing more of this run happens
            gone.set()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            stopped.cancel()

    with contextlib.suppress(Killed):
        asyncio.run(first())
    finished_before = [e["step"] for e in recorded if e["type"] == "step_finish"]
    # A step is recorded finished only once its checkpoint holds it.
    kept = boundary - 1 if at == "before-writes" else boundary
    assert len(finished_before) <= kept

    resumed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path),
            thread_id="t",
            resume=True,
            on_event=recorded.append,
            checkpoints=f"sqlite:///{path}",
            tracing=False,
        )
    )
    assert resumed.status == "succeeded"
    assert resumed.steps_run == STEPS[kept:]  # no finished step runs again
    finishes = [e for e in recorded if e["type"] == "step_finish"]
    once = list(dict.fromkeys(f"{e['focus_area']}:{e['step']}" for e in finishes))
    assert once == STEPS  # every step recorded, in order, once a store drops repeats
    assert [s["step"] for s in resumed.output["steps"]] == [s.name for s in OPTIMIZATION.steps]
