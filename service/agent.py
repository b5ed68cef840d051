"""The focus-area agents as an MLflow `ResponsesAgent`, for Databricks model serving.

The request names the focus area, model and filters in `custom_inputs`
(`{"focus_area": "financial-impact", "model": "offline", "filters": {"segment": "Retail"}}`)
or in words in the last user message ("financial impact for Retail customers");
unnamed, the four areas run with an executive summary. `predict_stream` emits each step as
an output item as soon as it finishes, then the report; `predict` collects the stream.
The runs checkpoint like any other (`service.runs.run_focus`) and are spans of the trace
ResponsesAgent opens for the call; the thread and trace ids are in `custom_outputs`.

This file is also the model-from-code that `service.deploy` logs: it ends with
`mlflow.models.set_model(...)`.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
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

from graphs.context import Context
from graphs.resources import warehouse_for
from service.responses import QUESTION_CHARS, last_user_text, report_text, step_text, understand
from service.runs import run_focus
from tools.metrics import Filters, check_scope

_DONE = object()


class FinMatchAgent(ResponsesAgent):
    """The focus-area agents behind the Responses API."""

    def __init__(self, warehouse: str = "") -> None:
        """Use `warehouse` (default: the configured one).

        ResponsesAgent traces `predict` and `predict_stream` into the store the host
        process set up (on Databricks, the endpoint's experiment); the run's steps,
        queries and model calls become spans of that trace. The agent never points MLflow
        elsewhere: it is a guest in the process that loaded it.
        """
        self.warehouse = warehouse

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
        check_scope(warehouse_for(self.warehouse), Filters(**filters))  # ScopeError says why
        context = Context(model=model, warehouse=self.warehouse, **filters)
        thread_id = str(uuid.uuid4())
        events: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}
        traced = mlflow.get_current_active_span()

        def run() -> None:  # the graphs are async: run them on a loop of their own
            try:
                outcome["result"] = asyncio.run(
                    run_focus(
                        focus,
                        context,
                        thread_id=thread_id,
                        question=last_user_text(request)[:QUESTION_CHARS],
                        on_event=events.put,
                        tracing=False,  # spans join this call's trace instead
                    )
                )
            except BaseException as e:  # handed to the caller below
                outcome["error"] = e
            finally:
                events.put(_DONE)

        # The worker sees this call's MLflow span (a context variable): spans nest in it.
        worker = threading.Thread(
            target=contextvars.copy_context().run,
            args=(run,),
            name=f"finmatch-{thread_id}",
            daemon=True,
        )
        worker.start()
        while (event := events.get()) is not _DONE:
            if event.get("type") == "step_finish":
                yield ResponsesAgentStreamEvent(
                    type="response.output_item.done",
                    item=self.create_text_output_item(step_text(event), str(uuid.uuid4())),
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
            item=self.create_text_output_item(report_text(result.output), str(uuid.uuid4())),
            custom_outputs={
                "focus_area": focus,
                "filters": filters,
                "thread_id": thread_id,
                "trace_id": traced.trace_id if traced else "",
            },
        )


AGENT = FinMatchAgent()
mlflow.models.set_model(AGENT)
