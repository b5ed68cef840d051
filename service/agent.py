"""The focus-area agents as an MLflow `ResponsesAgent`, for Databricks model serving.

The request names the focus area, model and filters in `custom_inputs`
(`{"focus_area": "financial-impact", "model": "offline", "filters": {"segment": "Retail"}}`)
or in words in the last user message ("financial impact for Retail customers");
unnamed, the four areas run with an executive summary. `predict_stream` emits each step as
an output item as soon as it finishes, then the report; `predict` collects the stream.
The runs checkpoint and trace like any other (`service.runs.run_focus`); the thread and
trace ids are in `custom_outputs`.

This file is also the model-from-code that `service.deploy` logs: it ends with
`mlflow.models.set_model(...)`.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import uuid
from collections.abc import Generator
from typing import Any

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import (
    ResponsesAgentRequest,
    ResponsesAgentResponse,
    ResponsesAgentStreamEvent,
)

from graphs.areas import FOCUS_AREAS
from graphs.context import Context
from graphs.models import check_model
from graphs.report import Report
from service.runs import ALL, run_focus
from tools.metrics import Filters
from tools.schema import LIFECYCLE_STAGES, PRODUCT_TYPES, SEGMENTS

_DONE = object()


def _last_user_text(request: ResponsesAgentRequest) -> str:
    for item in reversed(request.input):
        data = item.model_dump() if hasattr(item, "model_dump") else dict(item)
        if data.get("role") == "user":
            content = data.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return ""


def _mentioned(text: str, names: tuple[str, ...]) -> str | None:
    lowered = text.lower()
    for name in sorted(names, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name.lower())}\b", lowered):
            return name
    return None


def understand(request: ResponsesAgentRequest) -> tuple[str, str, dict[str, Any]]:
    """Return (focus area, model, filters) of a request; raise ValueError if one is unknown."""
    custom = dict(request.custom_inputs or {})
    text = _last_user_text(request)
    focus = custom.get("focus_area")
    if focus is None:
        names = {a.name: slug for slug, a in FOCUS_AREAS.items()}
        named = _mentioned(text, tuple(names))
        focus = names[named] if named else ALL
    if focus not in (*FOCUS_AREAS, ALL):
        raise ValueError(
            f"Unknown focus area {focus!r}; choose one of: {', '.join([*FOCUS_AREAS, ALL])}"
        )
    model = check_model(str(custom.get("model", "offline")))
    filters = dict(custom.get("filters") or {})
    if not custom.get("filters"):
        for key, vocabulary in (
            ("segment", SEGMENTS),
            ("lifecycle_stage", LIFECYCLE_STAGES),
            ("product_type", PRODUCT_TYPES),
        ):
            found = _mentioned(text, vocabulary)
            if found:
                filters[key] = found
    Filters(**filters)  # refuses unknown keys and bad dates with a clear message
    return focus, model, filters


def _report_text(output: dict[str, Any]) -> str:
    if "reports" in output:
        summary = output.get("summary", {})
        return f"# {summary.get('title', 'Executive summary')}\n\n{summary.get('markdown', '')}"
    return Report(**output["report"]).markdown()


class FinMatchAgent(ResponsesAgent):
    """The focus-area agents behind the Responses API."""

    def __init__(self, warehouse: str = "", tracing: bool | None = None) -> None:
        """Use `warehouse` (default: the configured one); trace runs unless told not to."""
        self.warehouse = warehouse
        self.tracing = tracing

    # ResponsesAgent narrows PythonModel's predict signatures; mypy sees the base's.
    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:  # type: ignore[override]
        """Run the request to the end; return every step and the report as output items."""
        items, custom = [], {}
        for event in self.predict_stream(request):
            if event.type == "response.output_item.done":
                items.append(event.model_dump()["item"])
            if event.custom_outputs:
                custom = event.custom_outputs
        return ResponsesAgentResponse(output=items, custom_outputs=custom)

    def predict_stream(  # type: ignore[override]
        self, request: ResponsesAgentRequest
    ) -> Generator[ResponsesAgentStreamEvent, None, None]:
        """Yield each finished step as an output item, then the report."""
        focus, model, filters = understand(request)
        context = Context(model=model, warehouse=self.warehouse, **filters)
        thread_id = str(uuid.uuid4())
        events: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:  # the graphs are async: run them on a loop of their own
            try:
                outcome["result"] = asyncio.run(
                    run_focus(
                        focus,
                        context,
                        thread_id=thread_id,
                        on_event=events.put,
                        tracing=self.tracing,
                    )
                )
            except BaseException as e:  # handed to the caller below
                outcome["error"] = e
            finally:
                events.put(_DONE)

        worker = threading.Thread(target=run, name=f"finmatch-{thread_id}", daemon=True)
        worker.start()
        while (event := events.get()) is not _DONE:
            if event.get("type") == "step_finish":
                text = f"{event['focus_area']}: {event['step']} — {event.get('detail', '')}"
                yield ResponsesAgentStreamEvent(
                    type="response.output_item.done",
                    item=self.create_text_output_item(text, str(uuid.uuid4())),
                )
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        if result.status != "succeeded":
            raise RuntimeError(
                f"The {focus} run failed: {result.error} (thread {thread_id} is resumable)"
            )
        yield ResponsesAgentStreamEvent(
            type="response.output_item.done",
            item=self.create_text_output_item(_report_text(result.output), str(uuid.uuid4())),
            custom_outputs={
                "focus_area": focus,
                "filters": filters,
                "thread_id": thread_id,
                "trace_id": result.trace_id,
            },
        )


AGENT = FinMatchAgent()
mlflow.models.set_model(AGENT)
