"""Run a focus-area graph durably: checkpointer, thread ids, resume, MLflow trace.

Every run has a thread id and checkpoints after every step with `durability="sync"`, so a
run that failed, was stopped or whose process was killed resumes at the step that did not
finish, without redoing finished ones. One MLflow trace per run (spans for each step,
query and model call come from the graphs); its id is on the result.

A step counts as finished once a stored checkpoint holds its record: `step_finish` is
announced from the checkpoints stream as they are written, and a resumed run first
announces again (marked `kept`) every step its checkpoints already hold, so whoever
records the events (once per step) ends with every step after any kill.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import StateSnapshot
from pydantic import AfterValidator, Field

from graphs.areas import FOCUS_AREAS
from graphs.context import Context
from graphs.steps import step_key
from graphs.tracing import Recording, root_span
from service.tracking import TracingSettings, tracking_uri, use_tracking
from tools.settings import current, project_home
from tools.text import clip, hide_password

ALL = "all"


CHECKPOINT_SCHEMES = ("sqlite:///", "postgres://", "postgresql://")


class CheckpointsError(Exception):
    """The checkpoint store named cannot be used: unreachable, or refused the connection."""


def checked_checkpoints(url: str) -> str:
    """Return a checkpoint store URL (empty: the default file); refuse other schemes."""
    if url and not url.startswith(CHECKPOINT_SCHEMES):
        raise ValueError(
            "checkpoints are kept at sqlite:///PATH or postgresql://USER@HOST/DATABASE; "
            f"got {clip(hide_password(url), 80)!r}"
        )
    return url


class RunSettings(TracingSettings):
    """Where runs keep their checkpoints (and, as TracingSettings says, their traces)."""

    finmatch_checkpoints: Annotated[str, AfterValidator(checked_checkpoints)] = Field(
        "", description="sqlite:///path (default .finmatch/checkpoints.sqlite) or postgresql://..."
    )


def builder_for(focus: str) -> Any:
    """Return the graph builder of a focus area slug, or of the portfolio for 'all'."""
    if focus == ALL:
        from graphs import portfolio

        return portfolio.builder
    if focus not in FOCUS_AREAS:
        raise ValueError(
            f"Unknown focus area {focus!r}; choose one of: {', '.join([*FOCUS_AREAS, ALL])}"
        )
    import importlib

    module = importlib.import_module(f"graphs.{focus.replace('-', '_')}")
    return module.builder


_COMPILED: OrderedDict[tuple[int, str], tuple[Any, Any]] = OrderedDict()
COMPILED_KEPT = 16


def compiled(focus: str, builder: Any, saver: BaseCheckpointSaver[Any]) -> Any:
    """Return the graph of `focus` compiled on `saver`, compiling once per saver.

    A compiled graph serves any number of concurrent runs (each has its own thread id);
    compiling takes tens of milliseconds, which a service starting many runs on one
    shared checkpointer need not pay each time. The last COMPILED_KEPT are kept.
    """
    key = (id(saver), focus)
    entry = _COMPILED.get(key)
    if entry is not None and entry[0] is saver:
        _COMPILED.move_to_end(key)
        return entry[1]
    graph = builder.compile(checkpointer=saver, name=focus)
    _COMPILED[key] = (saver, graph)
    while len(_COMPILED) > COMPILED_KEPT:
        _COMPILED.popitem(last=False)
    return graph


@asynccontextmanager
async def open_checkpointer(url: str = "") -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """Open the checkpointer at `url`: a SQLite file (default) or Postgres."""
    url = checked_checkpoints(url) or RunSettings().finmatch_checkpoints
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with contextlib.AsyncExitStack() as stack:
            try:
                postgres = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(url))
                await postgres.setup()
            except psycopg.OperationalError as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointsError(
                    f"cannot reach the checkpoint database at {hide_password(url)}: {reason}; "
                    "check FINMATCH_CHECKPOINTS and that the server accepts connections"
                ) from None
            yield postgres
        return
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    path = Path(url.removeprefix("sqlite:///")) if url else project_home() / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        try:
            yield saver
        finally:
            # A run that ends on one step's error may leave a sibling's checkpoint write in
            # flight. Closed under it, the connection kept that write's cursor and
            # transaction, and so its lock on the file, until the cursor was collected:
            # the write finishes first (every saver call holds the lock).
            async with saver.lock:
                pass


@contextlib.contextmanager
def run_trace(
    name: str, thread_id: str, focus: str, enabled: bool, recording: Recording | None = None
) -> Iterator[Any]:
    """Open the run's root span (the trace); yield it, or None when tracing is off.

    Into `recording` when given (written to MLflow later by `service.trace_writer`), else
    a live MLflow trace, exported in the background: `flush_traces` waits for it. Either
    way the thread is the trace's session, so a resumed run's traces group with it.
    """
    if recording is not None:
        recording.tags.update({"thread_id": thread_id, "focus_area": focus})
        recording.session = thread_id
        with root_span(recording, name) as recorded_root:
            yield recorded_root
        return
    if not enabled:
        yield None
        return
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    use_tracking()
    with mlflow.start_span(name=name, span_type="AGENT") as root:
        mlflow.update_current_trace(
            tags={"thread_id": thread_id, "focus_area": focus}, session_id=thread_id
        )
        yield root


def headlines(output: dict[str, Any]) -> dict[str, Any]:
    """Return what a trace's output says of a finished run: its headline(s)."""
    if "reports" in output:
        return {"headlines": {slug: r.get("headline", "") for slug, r in output["reports"].items()}}
    return {"headline": (output.get("report") or {}).get("headline", "")}


@dataclass
class RunResult:
    """How a run ended and what it produced."""

    thread_id: str
    focus: str
    status: str  # succeeded | failed | cancelled
    output: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    trace_id: str = ""
    traces: str = ""  # the MLflow tracking URI holding the trace
    steps_run: list[str] = field(default_factory=list)


def checkpointed_steps(snapshot: StateSnapshot) -> list[dict[str, Any]]:
    """Return the step records a thread's checkpoints hold, its subgraphs' included."""
    found = list(snapshot.values.get("steps") or [])
    for task in snapshot.tasks:
        if isinstance(task.state, StateSnapshot):
            found += checkpointed_steps(task.state)
    return found


class ThreadError(ValueError):
    """A thread id was reused for a new run, or a resume names a thread with nothing to do."""


async def run_focus(
    focus: str,
    context: Context,
    *,
    thread_id: str | None = None,
    resume: bool = False,
    question: str = "",
    on_event: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: str = "",
    tracing: bool | None = None,
    saver: BaseCheckpointSaver[Any] | None = None,
    recording: Recording | None = None,
) -> RunResult:
    """Run (or resume) `focus` on a thread and return its result; events go to `on_event`.

    The checkpointer is `saver` when given (a service shares one across its runs), else
    the one at `checkpoints` (default: the settings'), opened for this run. The trace is
    live in MLflow (`tracing`, default FINMATCH_TRACING), or kept in `recording`.
    """
    builder = builder_for(focus)
    thread_id = thread_id or str(uuid.uuid4())
    tracing = current(RunSettings).finmatch_tracing if tracing is None else tracing
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    result = RunResult(thread_id=thread_id, focus=focus, status="running")
    async with contextlib.AsyncExitStack() as stack:
        if saver is None:
            saver = await stack.enter_async_context(open_checkpointer(checkpoints))
        graph = compiled(focus, builder, saver)
        snapshot = await graph.aget_state(config, subgraphs=True)
        started = bool(snapshot.values) or bool(snapshot.next)
        if resume and not started:
            raise ThreadError(
                f"Thread {thread_id} has no run to resume; start one without --resume."
            )
        announced: set[str] = set()

        def finished(record: dict[str, Any], kept: bool = False) -> None:
            key = step_key(record)
            if key not in announced:
                announced.add(key)
                if on_event:
                    on_event({"type": "step_finish", **record, **({"kept": True} if kept else {})})

        if resume:
            for record in checkpointed_steps(snapshot):
                finished(record, kept=True)
        if resume and not snapshot.next:
            result.status, result.output = "succeeded", dict(snapshot.values)
            return result
        if not resume and started:
            raise ThreadError(
                f"Thread {thread_id} already has a run; add --resume to continue it or leave "
                "out --thread to start a new one."
            )
        payload = None if resume else {"question": question}
        with run_trace(f"finmatch:{focus}", thread_id, focus, tracing, recording) as root:
            if root is not None and recording is None:
                result.trace_id, result.traces = root.trace_id, tracking_uri()
            if root is not None:
                root.set_inputs(
                    {
                        "focus": focus,
                        "thread_id": thread_id,
                        "resume": resume,
                        "context": context.__dict__,
                    }
                )
            try:
                async for _ns, mode, chunk in graph.astream(
                    payload,
                    config,
                    context=context,
                    stream_mode=["custom", "checkpoints"],
                    subgraphs=True,
                    durability="sync",
                ):
                    if mode == "checkpoints":  # stored: its steps have finished
                        for record in chunk["values"].get("steps") or []:
                            finished(record)
                        continue
                    if chunk.get("type") == "step_start":
                        result.steps_run.append(f"{chunk.get('focus_area')}:{chunk.get('step')}")
                    if on_event:
                        on_event(chunk)
            except Exception as e:  # recorded on the result; the thread stays resumable
                result.status, result.error = "failed", f"{type(e).__name__}: {e}"
                if root is not None:
                    root.set_status("ERROR")
                    root.set_outputs({"status": result.status, "error": result.error})
                return result
            final = await graph.aget_state(config)
            result.status, result.output = "succeeded", dict(final.values)
            if root is not None:
                root.set_outputs({"status": result.status, **headlines(result.output)})
    return result
