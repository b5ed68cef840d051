"""Spans that cost nothing when no trace is active, recorded live or for later.

The entry point that runs a graph (CLI, service, serving agent) opens the trace; steps,
queries and model calls add spans to it through `span`, which goes to one of two places:

- a live MLflow trace, when an MLflow span is active in this context (the service, the
  serving agent, tests);
- a `Recording` of this process, when one is active: the spans are kept as plain data
  and written to MLflow afterwards by another process (`service.trace_writer`). The CLI
  does this so that it never imports MLflow itself: importing it and its SQL store costs
  about four seconds, more than a whole offline run, which a writer started beside the
  run spends on the other core instead.

Graph code never imports mlflow itself (importing it takes seconds), so tests and Studio
runs without tracing stay fast.
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# (the recording, the id of the span new spans nest in), while a recording is active.
_recording: contextvars.ContextVar[tuple[Recording, int] | None] = contextvars.ContextVar(
    "finmatch_recording", default=None
)


@dataclass
class RecordedSpan:
    """One span of a `Recording`: what a live MLflow span would hold, as plain data."""

    id: int
    parent: int | None
    name: str
    span_type: str
    start_ns: int
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "OK"
    end_ns: int = 0

    def set_inputs(self, inputs: dict[str, Any]) -> None:
        """Set the span's inputs."""
        self.inputs = dict(inputs)

    def set_outputs(self, outputs: dict[str, Any]) -> None:
        """Set the span's outputs."""
        self.outputs = dict(outputs)

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute."""
        self.attributes[key] = value

    def set_status(self, status: str) -> None:
        """Set the status (OK or ERROR)."""
        self.status = status


@dataclass
class Recording:
    """The spans of one trace, recorded in this process; written to MLflow elsewhere."""

    spans: list[RecordedSpan] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    session: str = ""

    def open(self, name: str, span_type: str, parent: int | None) -> RecordedSpan:
        """Start a span under `parent` (None: the root) and return it."""
        span = RecordedSpan(len(self.spans), parent, name, span_type, time.time_ns())
        self.spans.append(span)
        return span

    def as_json(self) -> dict[str, Any]:
        """Return the recording as JSON-friendly data (what the writer reads)."""
        return {
            "tags": self.tags,
            "session": self.session,
            "spans": [span.__dict__ for span in self.spans],
        }


@contextmanager
def recorded(recording: Recording, parent: int | None) -> Iterator[None]:
    """Make spans opened in this block (and tasks it starts) nest under `parent`."""
    token = _recording.set((recording, parent if parent is not None else -1))
    try:
        yield
    finally:
        _recording.reset(token)


@contextmanager
def root_span(recording: Recording, name: str, span_type: str = "AGENT") -> Iterator[RecordedSpan]:
    """Open the root span of `recording`; spans in this block nest under it."""
    root = recording.open(name, span_type, None)
    try:
        with recorded(recording, root.id):
            yield root
    except BaseException:
        root.status = "ERROR"
        raise
    finally:
        root.end_ns = time.time_ns()


@contextmanager
def span(
    name: str, span_type: str = "CHAIN", inputs: dict[str, Any] | None = None
) -> Iterator[Any]:
    """Open a child span of the active trace, if there is one; yield it or None."""
    active = _recording.get()
    if active is not None:
        recording, parent = active
        s = recording.open(name, span_type, parent)
        if inputs:
            s.set_inputs(inputs)
        try:
            with recorded(recording, s.id):
                yield s
        except BaseException:
            s.status = "ERROR"
            raise
        finally:
            s.end_ns = time.time_ns()
        return
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.get_current_active_span() is None:
        yield None
        return
    with mlflow.start_span(name=name, span_type=span_type) as live:
        if inputs:
            live.set_inputs(inputs)
        yield live
