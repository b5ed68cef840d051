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
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from graphs.areas import OPTIMIZATION
from graphs.context import Context
from service.runs import ThreadError, open_checkpointer, run_focus
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
    assert (
        report["headline"].startswith('The share "Accepted" is ') and "[OPT-" in report["headline"]
    )


def test_a_run_records_one_trace_with_step_query_model_and_tool_spans(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    scripted.CURRENT.append(
        ScriptedChatModel(
            replies=[
                AIMessage(
                    "", tool_calls=[tool_call("run_catalog_metric", {"metric_id": "revenue"}, "c1")]
                ),
                answer("Small Business lags [OPT-2].", [(t, "x") for t in OPTIMIZATION.titles], []),
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
    trace = _trace_of(result.trace_id)
    assert trace is not None
    names = [s.name for s in trace.data.spans]
    assert names[0] == f"finmatch:{FOCUS}"
    for step in OPTIMIZATION.steps:
        assert step.name in names
    assert {"query:kpis", "query:insights", "model", "tool:run_catalog_metric"} <= set(names)
    assert names.count("model") == 2
    model = next(s for s in trace.data.spans if s.name == "model")
    assert "senior retail-banking analyst" in json.dumps(model.inputs["messages"])
    assert model.outputs["tool_calls"][0]["name"] == "run_catalog_metric"
    answer_span = [s for s in trace.data.spans if s.name == "model"][-1]
    assert "Small Business lags [OPT-2]." in answer_span.outputs["content"]
    assert trace.info.tags["thread_id"] == "t-trace"
    query = next(s for s in trace.data.spans if s.name == "query:kpis")
    assert "FROM fpr_records" in query.outputs["sql"]
    assert query.outputs["cached"] is False


@pytest.mark.postgres
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
            # A linear graph's step n is the superstep n (0 takes the input in).
            if at == "after-checkpoint" and metadata.get("step") == n:
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


def _trace_of(trace_id: str) -> Any:
    import mlflow

    mlflow.flush_trace_async_logging()
    return mlflow.get_trace(trace_id)


def _parent(trace: Any, span: Any) -> Any:
    return next((s for s in trace.data.spans if s.span_id == span.parent_id), None)


def test_concurrent_traced_runs_each_record_a_whole_trace(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    async def eight() -> list[Any]:
        return await asyncio.gather(
            *(
                run_focus(
                    FOCUS,
                    ctx(large_path),
                    thread_id=f"t-{i}",
                    checkpoints=f"sqlite:///{tmp_path / 'ck.sqlite'}",
                    tracing=True,
                )
                for i in range(8)
            )
        )

    results = asyncio.run(eight())
    for result in results:
        assert result.status == "succeeded"
        trace = _trace_of(result.trace_id)
        assert trace.info.state == "OK", result.thread_id
        names = [s.name for s in trace.data.spans]
        assert all(step.name in names for step in OPTIMIZATION.steps)
        assert trace.info.request_metadata["mlflow.trace.session"] == result.thread_id
        root = trace.data.spans[0]
        assert root.outputs["headline"] == result.output["report"]["headline"]


def test_a_portfolio_trace_has_an_area_span_over_each_areas_steps(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = asyncio.run(
        run_focus(
            "all",
            ctx(large_path),
            checkpoints=f"sqlite:///{tmp_path / 'ck.sqlite'}",
            tracing=True,
        )
    )
    trace = _trace_of(result.trace_id)
    assert trace.info.state == "OK"
    from graphs.areas import FOCUS_AREAS

    for area in FOCUS_AREAS.values():
        for step in area.steps:
            span = next(s for s in trace.data.spans if s.name == step.name)
            parent = _parent(trace, span)
            assert parent is not None and parent.name == area.name, step.name
    headlines = trace.data.spans[0].outputs["headlines"]
    assert headlines == {slug: r["headline"] for slug, r in result.output["reports"].items()}


def test_a_resumed_runs_traces_share_its_thread_as_session(
    large_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    failed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path, "import:tests.graphs.scripted:failing"),
            checkpoints=ck,
            tracing=True,
        )
    )
    resumed = asyncio.run(
        run_focus(
            FOCUS,
            ctx(large_path),
            thread_id=failed.thread_id,
            resume=True,
            checkpoints=ck,
            tracing=True,
        )
    )
    first, second = _trace_of(failed.trace_id), _trace_of(resumed.trace_id)
    assert first.info.state == "ERROR" and second.info.state == "OK"
    for trace in (first, second):
        assert trace.info.request_metadata["mlflow.trace.session"] == failed.thread_id


def _cli(tmp_path: Path, large_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    finmatch = str(Path(sys.executable).parent / "finmatch")
    return subprocess.run(
        [finmatch, "analyze", "--focus", FOCUS, "--warehouse", f"duckdb:///{large_path}"],
        env={
            **os.environ,
            "FINMATCH_HOME": str(tmp_path / "home"),
            "MLFLOW_TRACKING_URI": "",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_cli_honours_finmatch_tracing_false(large_path: Path, tmp_path: Path) -> None:
    done = _cli(tmp_path, large_path, FINMATCH_TRACING="false")
    assert done.returncode == 0, done.stderr
    assert "Trace:" not in done.stdout
    assert not (tmp_path / "home" / "mlflow.db").exists()


def test_a_traced_cli_run_leaves_its_whole_trace_in_the_store(
    large_path: Path, tmp_path: Path
) -> None:
    import re

    import mlflow

    done = _cli(tmp_path, large_path)
    assert done.returncode == 0, done.stderr
    trace_id = re.search(r"Trace:\s+(tr-[0-9a-f]+)", done.stdout)
    assert trace_id, done.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    # The writer finishes the spans after the command has printed the id.
    deadline = time.monotonic() + 60
    while (trace := mlflow.get_trace(trace_id.group(1), silent=True)) is None or (
        trace.info.state == "IN_PROGRESS"
    ):
        assert time.monotonic() < deadline, "the trace was not written"
        time.sleep(0.1)
    assert trace.info.state == "OK"
    assert trace.info.request_metadata["mlflow.trace.session"] in done.stdout
    names = [s.name for s in trace.data.spans]
    assert names[0] == f"finmatch:{FOCUS}"
    assert all(step.name in names for step in OPTIMIZATION.steps)
    assert "query:insights" in names
    step = next(s for s in trace.data.spans if s.name == OPTIMIZATION.steps[0].name)
    assert _parent(trace, step).name == names[0]
    assert step.end_time_ns > step.start_time_ns >= trace.data.spans[0].start_time_ns


def _checkpoints(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import sqlite3

    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    serde = JsonPlusSerializer()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT checkpoint_ns, type, checkpoint FROM checkpoints ORDER BY checkpoint_id"
        ).fetchall()
    return [(ns, serde.loads_typed((t, blob))) for ns, t, blob in rows]


def test_a_portfolio_run_stores_no_value_twice(large_path: Path, tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "ck.sqlite"
    result = asyncio.run(
        run_focus("all", ctx(large_path), checkpoints=f"sqlite:///{path}", tracing=False)
    )
    assert result.status == "succeeded"
    seen: dict[str, set[bytes]] = {}
    for ns, checkpoint in _checkpoints(path):
        for channel, value in checkpoint["channel_values"].items():
            blob = pickle.dumps(value)
            if len(blob) > 1024 and channel != "__start__":
                assert blob not in seen.setdefault(ns, set()), (ns, channel)
                seen[ns].add(blob)
    # The evidence gathered for all four areas is kept by none of them: they refer to it.
    for _ns, checkpoint in _checkpoints(path):
        assert "rows" not in json.dumps(checkpoint["channel_values"].get("__start__", {}))


def test_a_resumed_portfolio_gathers_again_what_the_areas_referred_to(
    large_path: Path, tmp_path: Path
) -> None:
    ck = f"sqlite:///{tmp_path / 'ck.sqlite'}"
    failed = asyncio.run(
        run_focus(
            "all", ctx(large_path, "import:tests.graphs.scripted:failing"), checkpoints=ck,
            tracing=False,
        )
    )  # fmt: skip
    assert failed.status == "failed"
    # A new process: the evidence shared in the first one is gone.
    resumed = asyncio.run(
        run_focus(
            "all",
            ctx(large_path),
            thread_id=failed.thread_id,
            resume=True,
            checkpoints=ck,
            tracing=False,
        )
    )
    fresh = asyncio.run(run_focus("all", ctx(large_path), checkpoints=ck, tracing=False))
    assert resumed.status == "succeeded", resumed.error
    for slug, report in resumed.output["reports"].items():
        again = fresh.output["reports"][slug]
        assert report["headline"] == again["headline"]
        assert report["numbers_checked"] == again["numbers_checked"] > 0
        assert report["ungrounded"] == []
        assert [e["sql"] for e in report["evidence"]] == [e["sql"] for e in again["evidence"]]


def test_a_write_in_flight_when_a_run_ends_does_not_lock_its_checkpoints(tmp_path: Path) -> None:
    """When one area fails, a sibling area's checkpoint write may still be in flight as
    the run ends. Closing the connection under it left its cursor and transaction open, so
    Python kept the file locked until that cursor was collected, and the resume that
    followed failed: "database is locked"."""
    path = tmp_path / "ck.sqlite"
    kept: list[Any] = []

    async def end_with_a_write_in_flight() -> None:
        async with open_checkpointer(f"sqlite:///{path}") as saver:
            await saver.setup()  # type: ignore[attr-defined]

            async def write() -> None:  # as AsyncSqliteSaver.aput_writes does
                async with saver.lock, saver.conn.cursor() as cur:  # type: ignore[attr-defined]
                    await cur.executemany(
                        "INSERT INTO writes VALUES (?, '', 'c', 't', '', ?, 'x', 'json', 'v')",
                        [("thread", i) for i in range(100)],
                    )
                    await saver.conn.commit()  # type: ignore[attr-defined]

            kept.append(asyncio.ensure_future(write()))
            await asyncio.sleep(0)  # the write has started, not finished

    asyncio.run(end_with_a_write_in_flight())
    other = sqlite3.connect(path, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # was: OperationalError: database is locked
    other.rollback()
    assert other.execute("SELECT count(*) FROM writes").fetchone() == (100,)  # it finished
    other.close()


def test_processes_opening_a_new_trace_store_at_once_all_succeed(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    script = f"from service.tracking import use_tracking; use_tracking('sqlite:///{store}')"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    assert [e.name for e in client.search_experiments() if e.name == "finmatch"] == ["finmatch"]
