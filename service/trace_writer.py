"""Write recorded traces to MLflow from a process of its own, beside the runs.

Exporting a trace to MLflow's SQL store is SQLAlchemy work in Python: about 100 ms of CPU
per run on these machines, more than the run itself, and on a service it competes with
every run for the one interpreter lock. Importing MLflow and opening the store costs a
CLI about three seconds, more than a whole offline run. So the runs record their spans as
plain data (`graphs.tracing.Recording`) and this writer, a process of its own started
with the CLI command or the service, writes them: the import, the store and the export
happen on the other core while the runs go on.

The protocol is JSON lines. The caller writes one recording per line on the writer's
stdin; for each, in order, the writer starts the trace and answers one line
`{"trace_id": ...}` (or `{"error": ...}`) at once, then writes the trace's spans (names,
nesting, times, inputs, outputs, status; the thread as the trace's session) in the
background. When its stdin closes, it writes what is left and exits, so a CLI command
returns as soon as it has the id and a service waits for the writer only at shutdown.
What goes wrong after an id was given is in `<home>/trace-writer.log`.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from graphs.tracing import Recording
from tools.settings import project_home

ROOT = Path(__file__).resolve().parents[1]
# How long a command waits for its trace's id: the writer started with the command, so
# by its end MLflow is loaded; a first store is made in a few seconds.
WRITE_WAIT_S = 30.0
REASON_CHARS = 300  # of an error told back to the caller


class TraceWriteError(Exception):
    """A recorded trace could not be written; the message says why."""


class TraceWriter:
    """The writer process, started at once; `submit` hands it a recording.

    Thread-safe: answers come back in the order recordings were sent, each to its own
    future.
    """

    def __init__(self, uri: str) -> None:
        """Start the writer for the tracking store at `uri`."""
        self.uri = uri
        self.log = project_home() / "trace-writer.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {
            # A tracking server that is down or unreachable is told within seconds, not
            # after MLflow's default 7 retries of 120 s each; the user's settings win.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
            **os.environ,
            # Spans are exported as they end, on the writer's own thread.
            "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        with self.log.open("a") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "service.trace_writer", uri],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
                start_new_session=True,  # a Ctrl-C for the run is not the writer's
            )
        self._lock = threading.Lock()
        self._waiting: queue.SimpleQueue[Future[str]] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="finmatch-traces", daemon=True)
        self._reader.start()

    def submit(self, recording: Recording) -> Future[str]:
        """Send a recording; the future gets its trace id once the writer has started it."""
        done: Future[str] = Future()
        line = json.dumps(recording.as_json(), default=str) + "\n"
        with self._lock:
            stdin = self._proc.stdin
            try:
                if stdin is None or stdin.closed:
                    raise BrokenPipeError
                self._waiting.put(done)
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, ValueError):
                done.set_exception(self._gone())
        return done

    def write(self, recording: Recording, timeout_s: float = WRITE_WAIT_S) -> str:
        """Send a recording and return its trace id (raises TraceWriteError)."""
        answer = self.submit(recording)
        try:
            # Raised anew: the answer's own exception, raised here, would keep this frame
            # and the caller's (the whole run) alive in a cycle to the end of the process.
            error = answer.exception(timeout=timeout_s)
            if error is not None:
                raise TraceWriteError(str(error))
            return answer.result()
        except TimeoutError:
            raise TraceWriteError(
                f"the store did not answer within {timeout_s:g} s (see {self.log})"
            ) from None

    def close(self, timeout_s: float | None = None) -> None:
        """Let the writer finish what it was sent; wait `timeout_s` for it (None: don't)."""
        with self._lock:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                self._proc.stdin.close()
        if timeout_s is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.cancel()
            self._reader.join(timeout_s)  # every answer it gave has reached its future

    def alive(self) -> bool:
        """Whether the writer process is still running and taking recordings."""
        return self._proc.poll() is None and not (self._proc.stdin and self._proc.stdin.closed)

    def cancel(self) -> None:
        """Stop the writer now, written or not."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _gone(self) -> TraceWriteError:
        code = self._proc.poll()
        state = f"exited with code {code}" if code is not None else "stopped answering"
        return TraceWriteError(
            f"the trace writer for {self.uri} {state}; its message is in {self.log}"
        )

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            done = self._waiting.get()
            answer = json.loads(line)
            if "trace_id" in answer:
                done.set_result(str(answer["trace_id"]))
            else:
                done.set_exception(TraceWriteError(str(answer.get("error"))))
        while not self._waiting.empty():  # the writer ended: nothing more will come
            done = self._waiting.get()
            if not done.done():
                done.set_exception(self._gone())


# -- the writer process ------------------------------------------------------------------
def start_trace(data: dict[str, Any]) -> tuple[Any, dict[int, Any]]:
    """Start the trace of a recording (`Recording.as_json()`); return its root span."""
    import mlflow

    spans = data["spans"]
    if not spans:
        raise TraceWriteError("the recording holds no span")
    first = spans[0]
    root = mlflow.start_span_no_context(
        first["name"],
        span_type=first["span_type"],
        inputs=first["inputs"] or None,
        attributes=first["attributes"] or None,
        tags=data.get("tags") or None,
        metadata={"mlflow.trace.session": data["session"]} if data.get("session") else None,
        start_time_ns=first["start_ns"],
    )
    return root, {first["id"]: root}


def finish_trace(data: dict[str, Any], live: dict[int, Any]) -> None:
    """Write the rest of a started trace: every other span, then the ends, children first."""
    import mlflow

    spans = data["spans"]
    for record in spans[1:]:  # a span is opened after its parent, so parents come first
        live[record["id"]] = mlflow.start_span_no_context(
            record["name"],
            span_type=record["span_type"],
            parent_span=live[record["parent"]],
            inputs=record["inputs"] or None,
            attributes=record["attributes"] or None,
            start_time_ns=record["start_ns"],
        )
    for record in reversed(spans):
        live[record["id"]].end(
            outputs=record["outputs"] or None,
            status=record["status"],
            end_time_ns=record["end_ns"] or record["start_ns"],
        )


def serve(uri: str, lines: IO[str], answers: IO[str]) -> None:
    """Answer each recording on `lines` with its trace id; write the traces meanwhile."""
    from service.tracking import use_tracking

    try:
        use_tracking(uri)  # imports MLflow's store while the runs are still working
    except Exception as e:  # unreachable or refused: every recording is told why
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:REASON_CHARS]
        sys.stderr.write(f"the tracking store at {uri} could not be opened: {reason}\n")
        for _line in lines:
            told = f"the tracking store could not be opened: {reason}"
            answers.write(json.dumps({"error": told}) + "\n")
            answers.flush()
        return
    import mlflow

    mlflow.tracing.enable()  # sets up the tracer now, not when the first trace arrives
    work: queue.SimpleQueue[tuple[dict[str, Any], dict[int, Any]] | None] = queue.SimpleQueue()

    def write() -> None:
        while (item := work.get()) is not None:
            try:
                finish_trace(*item)
            except Exception as e:  # one bad trace must not stop the others
                sys.stderr.write(f"a trace could not be written: {type(e).__name__}: {e}\n")

    writer = threading.Thread(target=write, name="finmatch-trace-writer")
    writer.start()
    try:
        for line in lines:
            try:
                data = json.loads(line)
                root, live = start_trace(data)
            except Exception as e:  # answered, so the caller is not left waiting
                answers.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            else:
                answers.write(json.dumps({"trace_id": root.trace_id}) + "\n")
                work.put((data, live))
            answers.flush()
    finally:
        work.put(None)
        writer.join()


def main() -> int:
    """Write traces to the store named on the command line until stdin closes."""
    import logging

    import mlflow  # noqa: F401 - the import is the work done in advance

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        serve(sys.argv[1], sys.stdin, sys.stdout)
    except BrokenPipeError:  # the caller went away without waiting for an answer
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
