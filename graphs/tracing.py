"""MLflow spans that cost nothing when no trace is active.

The entry point that runs a graph (CLI, service, serving agent) opens the trace; steps,
queries and model calls add spans to it through `span`. Graph code never imports mlflow
itself (importing it takes seconds), so tests and Studio runs without tracing stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def span(
    name: str, span_type: str = "CHAIN", inputs: dict[str, Any] | None = None
) -> Iterator[Any]:
    """Open a child span of the active MLflow trace, if there is one; yield it or None."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.get_current_active_span() is None:
        yield None
        return
    with mlflow.start_span(name=name, span_type=span_type) as s:
        if inputs:
            s.set_inputs(inputs)
        yield s
