"""Write a run's recorded trace to MLflow from a process of its own, started beside the run.

Importing MLflow and opening its SQL tracking store takes about three seconds on these
machines, more than a whole offline four-area run. The CLI therefore records its spans as
plain data (`graphs.tracing.Recording`) and starts this writer when the command starts:
while the run works on one core, the writer imports MLflow and opens the store on the
other. When the run ends the CLI sends the recording as JSON on the writer's stdin; the
writer starts the trace, prints `{"trace_id": ...}` on stdout (the CLI's last wait), then
writes the spans with their own names, nesting, times, inputs, outputs and status, the
thread as the trace's session, and exits: the command does not wait for the last
half second of writing. What goes wrong after the id was sent is in `<home>/trace-writer.log`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphs.tracing import Recording
from tools.settings import project_home

ROOT = Path(__file__).resolve().parents[1]


class TraceWriteError(Exception):
    """The recorded trace could not be written; the message says why."""


class TraceWriter:
    """The writer process, started at once; `write` hands it the recording."""

    def __init__(self, uri: str) -> None:
        """Start the writer for the tracking store at `uri`."""
        self.uri = uri
        env = {
            **os.environ,
            # The trace is exported as it ends, so the writer is done when it answers.
            "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        self.log = project_home() / "trace-writer.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
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

    def write(self, recording: Recording, timeout_s: float = 120.0) -> str:
        """Send the recording; return the trace id once the writer has started the trace."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(recording.as_json(), default=str))
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # the writer has ended already: its exit code tells
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not ready:
            self.cancel()
            raise TraceWriteError(f"starting the trace in {self.uri} took over {timeout_s:g} s")
        if not line:
            self._proc.wait()
            raise TraceWriteError(
                f"the trace could not be written to {self.uri} (the writer exited with code "
                f"{self._proc.returncode}; its message is in {self.log})"
            )
        return str(json.loads(line)["trace_id"])

    def cancel(self) -> None:
        """Stop the writer if it was handed nothing (it writes on its own once it has been)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.kill()
            self._proc.wait()


def write_recording(
    data: dict[str, Any], uri: str, started: Callable[[str], None] | None = None
) -> str:
    """Write a recording (`Recording.as_json()`) as one MLflow trace; return its id.

    `started` is told the trace id as soon as the trace exists, before its spans are written.
    """
    import mlflow

    from service.tracking import use_tracking

    use_tracking(uri)
    spans = data["spans"]
    if not spans:
        raise TraceWriteError("the recording holds no span")
    live: dict[int, Any] = {}
    for record in spans:  # a span is opened after its parent, so parents come first
        root = record["parent"] is None
        live[record["id"]] = mlflow.start_span_no_context(
            record["name"],
            span_type=record["span_type"],
            parent_span=live.get(record["parent"]),
            inputs=record["inputs"] or None,
            attributes=record["attributes"] or None,
            tags=data.get("tags") or None if root else None,
            metadata={"mlflow.trace.session": data["session"]}
            if root and data.get("session")
            else None,
            start_time_ns=record["start_ns"],
        )
        if root and started is not None:
            started(str(live[record["id"]].trace_id))
    for record in reversed(spans):  # children end before their parents
        live[record["id"]].end(
            outputs=record["outputs"] or None,
            status=record["status"],
            end_time_ns=record["end_ns"] or record["start_ns"],
        )
    return str(live[spans[0]["id"]].trace_id)


def main() -> int:
    """Open the store named on the command line, then write the recording read on stdin."""
    import logging

    uri = sys.argv[1]
    import mlflow  # noqa: F401 - the import (and the store's) is the work done in advance

    from service.tracking import use_tracking

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    use_tracking(uri)  # opens the store while the run is still working
    data = json.loads(sys.stdin.read())

    def started(trace_id: str) -> None:
        sys.stdout.write(json.dumps({"trace_id": trace_id}) + "\n")
        sys.stdout.close()  # the command may exit now; the spans are written after

    write_recording(data, uri, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
