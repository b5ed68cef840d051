"""The run manager: runs queue, execute in the background with bounded concurrency.

A run the service accepts is stored (`queued`) and put on a queue; `max_concurrent`
workers take runs off it and execute them with `service.runs.run_focus` on one shared
checkpointer, so every run checkpoints after each step and can be resumed. Each event a
run emits is appended to the store by a single I/O thread (in order, never on the event
loop) and wakes whoever follows the run.

Cancelling a running run cancels its task: the graph stops at its next await, the
checkpoint of the last finished step stays, and `resume` continues from there. When the
service stops, running runs are stopped the same way and marked failed with a note;
at the next start, runs still marked running (a crash) are marked the same way and runs
still queued are queued again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from graphs.context import Context
from graphs.tracing import Recording
from service.runs import RunResult, ThreadError, open_checkpointer, run_focus
from service.store import TERMINAL, Event, RunRecord, RunStore
from service.trace_writer import TraceWriteError, TraceWriter
from service.tracking import tracking_uri

log = logging.getLogger("finmatch.service")
T = TypeVar("T")

TRACES_DRAIN_S = 60.0  # at shutdown, how long the trace writer may take to finish
# How long a run's end waits for the writer to start its trace (it answers in
# milliseconds when the store is reachable). A later id is recorded when it comes; while
# the writer is late, runs do not wait for it at all and keep their place for others.
TRACE_ID_WAIT_S = 5.0

INTERRUPTED = (
    "The service stopped while this run was running. Its finished steps are saved: "
    "POST /runs/{id}/resume continues it from the last one."
)


class RunConflict(Exception):
    """The run is not in a state that allows the request (e.g. resuming a running run)."""


class QueueFull(Exception):
    """The queue holds as many runs as it may; try again later."""


class RunManager:
    """Queue, execute, cancel and resume runs; record everything in a RunStore."""

    def __init__(
        self,
        store: RunStore,
        *,
        warehouse: str = "",
        checkpoints: str = "",
        tracing: bool = True,
        max_concurrent: int = 4,
        queue_limit: int = 1000,
    ) -> None:
        """Configure; nothing runs until `start`."""
        self.store = store
        self.warehouse = warehouse
        self.checkpoints = checkpoints
        self.tracing = tracing
        self.max_concurrent = max_concurrent
        self.queue_limit = queue_limit
        self._io_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finmatch-store")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._reserved = 0  # places taken by runs being stored, not queued yet
        self._busy = 0  # workers that have taken a run from the queue
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._changed: dict[str, asyncio.Event] = {}
        self._log: dict[str, list[Event]] = {}  # events of live runs, as appended
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._saver: Any = None
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self._traces: TraceWriter | None = None
        self._traces_late = False  # the writer's last answer was late or an error
        self._late_ids: set[asyncio.Future[Any]] = set()  # trace ids being recorded late

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the checkpointer, recover what a previous process left, start the workers."""
        self._saver = await self._stack.enter_async_context(open_checkpointer(self.checkpoints))
        if self.tracing:  # traces are written by a process of their own, off this one's CPU
            self._traces = TraceWriter(tracking_uri())
        for run in await self.io(self.store.with_status, "running"):
            await self._finish(run.id, "failed", error=INTERRUPTED.format(id=run.id))
        for run in await self.io(self.store.with_status, "queued"):
            self._queue.put_nowait(run.id)
        self._workers = [
            asyncio.create_task(self._worker(), name=f"finmatch-worker-{i}")
            for i in range(self.max_concurrent)
        ]

    async def stop(self) -> None:
        """Stop the workers; running runs stop at their next step and stay resumable.

        Safe to call more than once (on the first signal, then at shutdown): all wait for
        the same stop. Event streams end once they have sent what there is.
        """
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for run_id in list(self._changed):  # followers: nothing more is coming
            self._notify(run_id)
        await self._stack.aclose()
        if self._traces is not None:  # the writer finishes what it was sent
            await asyncio.to_thread(self._traces.close, TRACES_DRAIN_S)
            await asyncio.sleep(0)  # its last answers are handled, then recorded
            await asyncio.gather(*self._late_ids, return_exceptions=True)
        self._io_pool.shutdown(wait=True)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call on the I/O thread (in submission order) and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_pool, fn, *args)

    def ready(self) -> bool:
        """Return whether the workers and the checkpointer are up."""
        return self._saver is not None and all(not w.done() for w in self._workers)

    # -- requests ----------------------------------------------------------------------
    async def submit(
        self, focus_area: str, model: str, filters: dict[str, Any], question: str = ""
    ) -> RunRecord:
        """Store a new run as queued and queue it (QueueFull when the queue has no place).

        The place is taken before the first await: requests arriving meanwhile see it
        taken, so a burst never gets more places than the limit.
        """
        # Runs that idle workers take at once do not wait: they hold no place.
        idle = len(self._workers) - self._busy
        waiting = max(0, self._queue.qsize() + self._reserved - idle)
        if waiting >= self.queue_limit:
            raise QueueFull(
                f"{waiting} runs are already waiting (the limit is "
                f"{self.queue_limit}); try again when some have finished."
            )
        self._reserved += 1
        try:
            return await self._admit(focus_area, model, filters, question)
        finally:
            self._reserved -= 1

    async def _admit(
        self, focus_area: str, model: str, filters: dict[str, Any], question: str
    ) -> RunRecord:
        run = RunRecord(
            id=str(uuid.uuid4()),
            thread_id=str(uuid.uuid4()),
            focus_area=focus_area,
            model=model,
            filters=filters,
            question=question,
            status="queued",
            created_at=time.time(),
        )
        await self.io(self.store.create, run)
        await self._event(run.id, "status", {"status": "queued"})
        self._queue.put_nowait(run.id)
        return run

    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a queued or running run; it stays resumable."""
        run = await self._get(run_id)
        if run.status in TERMINAL:
            raise RunConflict(f"Run {run_id} has already ended ({run.status}); nothing to cancel.")
        self._cancel_requested.add(run_id)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        run = await self._get(run_id)
        if run.status not in TERMINAL:  # still queued, or cancelled before it could start
            await self._finish(run_id, "cancelled")
            run = await self._get(run_id)
        return run

    async def resume(self, run_id: str) -> RunRecord:
        """Queue a failed or cancelled run again; it continues from its last finished step."""
        run = await self._get(run_id)
        if run.status not in ("failed", "cancelled"):
            raise RunConflict(
                f"Run {run_id} is {run.status}; only a failed or cancelled run can be resumed."
            )
        self._cancel_requested.discard(run_id)
        await self.io(self.store.update, run_id, {"status": "queued", "error": ""})
        await self._event(run_id, "status", {"status": "queued", "resumed": True})
        self._queue.put_nowait(run_id)
        return await self._get(run_id)

    def changed(self, run_id: str) -> asyncio.Event:
        """Return an Event set at the run's next event (take it before reading events)."""
        return self._changed.setdefault(run_id, asyncio.Event())

    async def follow(
        self, run_id: str, after: int = 0, idle: float | None = None
    ) -> AsyncIterator[Event | None]:
        """Yield the run's events after number `after`, as they come, until it has ended.

        With `idle` seconds, yields None whenever that long passes without an event.
        """
        while True:
            changed = self.changed(run_id)
            events = await self.events_after(run_id, after)
            for event in events:
                yield event
                after = event.seq
            # Done when the last event is the run's `end` and the run has not been resumed
            # since; that includes a client reconnecting with the `end` as Last-Event-ID.
            if self._stopping and not events:  # the service is going down
                return
            last = events[-1] if events else await self._event_at(run_id, after)
            if last is not None and last.type == "end":
                run = await self.io(self.store.get, run_id, False)
                if run is not None and run.status in TERMINAL:
                    return
            try:
                await asyncio.wait_for(changed.wait(), idle)
            except TimeoutError:
                yield None

    async def events_after(self, run_id: str, after: int) -> list[Event]:
        """Return the run's events numbered above `after`.

        A live run's events are kept in memory as they are appended, so any number of
        followers read them without a query each; older ones come from the store.
        """
        log = self._log.get(run_id)
        if log and log[0].seq <= after + 1:
            return log[after + 1 - log[0].seq :]
        return await self.io(self.store.events, run_id, after)

    # -- internals ---------------------------------------------------------------------
    async def _event_at(self, run_id: str, seq: int) -> Event | None:
        """Return the run's event number `seq`, if it has one."""
        if seq < 1:
            return None
        events = await self.io(self.store.events, run_id, seq - 1)
        return events[0] if events and events[0].seq == seq else None

    async def _get(self, run_id: str) -> RunRecord:
        run = await self.io(self.store.get, run_id, False)
        if run is None:
            raise KeyError(run_id)
        return run

    def _notify(self, run_id: str) -> None:
        event = self._changed.pop(run_id, None)
        if event is not None:
            event.set()

    def _event_nowait(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        """Append an event from synchronous code on the loop (the graphs' stream)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._io_pool, self.store.append, run_id, type_, data)
        future.add_done_callback(lambda f: self._appended(run_id, f))
        self._pending.setdefault(run_id, []).append(future)

    def _appended(self, run_id: str, future: asyncio.Future[Event | None]) -> None:
        """Keep a stored event in the live log (callbacks run in append order)."""
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            event = future.result()
            assert event is not None
            log = self._log.get(run_id)
            if log and log[-1].seq == event.seq - 1:
                log.append(event)
            else:  # the first event here (or after a gap): earlier ones are in the store
                self._log[run_id] = [event]
            if event.type == "end":  # followers that still need it read the store
                self._log.pop(run_id, None)
        self._notify(run_id)

    async def _event(self, run_id: str, type_: str, data: dict[str, Any]) -> None:
        self._event_nowait(run_id, type_, data)
        await self._flush(run_id)

    async def _flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        if pending:
            await asyncio.gather(*pending)

    async def _finish(
        self,
        run_id: str,
        status: str,
        *,
        error: str = "",
        trace_id: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        await self._flush(run_id)
        fields: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error}
        if trace_id is not None:
            fields["trace_id"] = trace_id
        if result is not None:
            fields["result"] = result
            await self._event(run_id, "report", result)
        await self.io(self.store.update, run_id, fields)
        end = {"status": status, "error": error, "trace_id": trace_id or ""}
        await self._event(run_id, "end", end)

    async def _worker(self) -> None:
        while True:
            run_id = await self._queue.get()
            self._busy += 1
            try:
                run = await self.io(self.store.get, run_id, False)
                if run is None or run.status != "queued" or run_id in self._cancel_requested:
                    continue
                task = asyncio.create_task(self._execute(run), name=f"finmatch-run-{run_id}")
                self._tasks[run_id] = task
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    if not task.done():  # the worker itself is being stopped
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                        raise
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in the bookkeeping must not kill the worker
                log.exception("run %s could not be executed", run_id)
            finally:
                self._busy -= 1
                self._tasks.pop(run_id, None)
                self._queue.task_done()

    async def _execute(self, run: RunRecord) -> None:
        attempt = run.attempts + 1
        started = {"status": "running", "started_at": time.time(), "attempts": attempt}
        context = Context(model=run.model, warehouse=self.warehouse, **run.filters)
        recording = Recording() if self._traces is not None else None

        def on_event(chunk: dict[str, Any]) -> None:
            self._event_nowait(run.id, str(chunk.get("type", "event")), chunk)

        async def go(resume: bool) -> RunResult:
            return await run_focus(
                run.focus_area,
                context,
                thread_id=run.thread_id,
                resume=resume,
                question=run.question,
                on_event=on_event,
                saver=self._saver,
                tracing=False,
                recording=recording,
            )

        try:
            await self.io(self.store.update, run.id, started)
            await self._event(run.id, "status", {"status": "running", "attempt": attempt})
            try:
                result = await go(resume=run.attempts > 0)
            except ThreadError:  # stopped before its first checkpoint: start it afresh
                recording = Recording() if recording is not None else None
                result = await go(resume=False)
        except asyncio.CancelledError:
            trace_id = await self._trace(run.id, recording)
            if run.id in self._cancel_requested and not self._stopping:
                await self._finish(run.id, "cancelled", trace_id=trace_id)
            else:
                await self._finish(
                    run.id, "failed", error=INTERRUPTED.format(id=run.id), trace_id=trace_id
                )
            return
        except Exception as e:  # the run failed before its graph could report it
            log.exception("run %s failed", run.id)
            await self._finish(run.id, "failed", error=f"{type(e).__name__}: {e}")
            return
        trace_id = await self._trace(run.id, recording)
        if result.status != "succeeded":
            await self._finish(run.id, "failed", error=result.error, trace_id=trace_id)
            return
        out = result.output
        report = (
            {"reports": out.get("reports", {}), "summary": out.get("summary", {})}
            if "reports" in out
            else {"report": out.get("report", {})}
        )
        await self._finish(run.id, "succeeded", trace_id=trace_id, result=report)

    async def _trace(self, run_id: str, recording: Recording | None) -> str:
        """Hand a run's recorded trace to the writer; return its id ('' without one)."""
        if self._traces is None or recording is None or not recording.spans:
            return ""
        if not self._traces.alive() and not self._stopping:  # it died: the next runs need one
            log.warning("the trace writer stopped; starting another (see %s)", self._traces.log)
            self._traces = TraceWriter(self._traces.uri)
        answer = self._traces.submit(recording)
        loop = asyncio.get_running_loop()

        def answered(done: concurrent.futures.Future[str]) -> None:  # on the writer's thread
            loop.call_soon_threadsafe(self._trace_answered, run_id, done)

        waiting = asyncio.wrap_future(answer)
        try:
            trace_id = await asyncio.wait_for(
                asyncio.shield(waiting), 0 if self._traces_late else TRACE_ID_WAIT_S
            )
        except TraceWriteError as e:  # the run stands; its trace is lost
            log.warning("the trace of run %s was not written: %s", run_id, e)
            self._traces_late = True
            return ""
        except TimeoutError:
            self._traces_late = True
            # The late answer is handled by `answered`; here it is only collected.
            waiting.add_done_callback(lambda done: done.cancelled() or done.exception())
            answer.add_done_callback(answered)
            return ""
        self._traces_late = False
        return trace_id

    def _trace_answered(self, run_id: str, answer: concurrent.futures.Future[str]) -> None:
        """A late answer of the writer: record the run's trace id, or why it has none."""
        error = answer.exception()
        self._traces_late = error is not None
        if error is not None:
            log.warning("the trace of run %s was not written: %s", run_id, error)
            return
        task = asyncio.ensure_future(
            self.io(self.store.update, run_id, {"trace_id": answer.result()})
        )
        self._late_ids.add(task)
        task.add_done_callback(self._late_ids.discard)
