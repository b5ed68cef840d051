"""The Responses contract's side of the agents: reading a request, writing output items.

Shared by the model-serving agent (`service.agent`) and the service's `/invocations`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mlflow.types.responses import ResponsesAgentRequest

from graphs.areas import FOCUS_AREAS
from graphs.models import check_model
from graphs.report import Report
from service.runs import ALL
from tools.metrics import Filters
from tools.schema import LIFECYCLE_STAGES, PRODUCT_TYPES, SEGMENTS
from tools.text import clip

QUESTION_CHARS = 2000  # the most of the user's message handed to the model as its question


def last_user_text(request: ResponsesAgentRequest) -> str:
    """Return the text of the request's last user message ('' if there is none)."""
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
    text = last_user_text(request)
    focus = custom.get("focus_area")
    if focus is None:
        names = {a.name: slug for slug, a in FOCUS_AREAS.items()}
        named = _mentioned(text, tuple(names))
        focus = names[named] if named else ALL
    if not isinstance(focus, str) or focus not in (*FOCUS_AREAS, ALL):
        raise ValueError(
            f"Unknown focus area {clip(repr(focus), 80)}; "
            f"choose one of: {', '.join([*FOCUS_AREAS, ALL])}"
        )
    model = check_model(str(custom.get("model", "offline")), any_import=False)
    given = custom.get("filters")
    if given is not None and not isinstance(given, dict):
        raise ValueError(
            'custom_inputs.filters must be an object such as {"segment": "Retail"}; '
            f"got {clip(json.dumps(given, default=str), 80)}"
        )
    filters = dict(given or {})
    if not given:
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


def step_text(event: dict[str, Any]) -> str:
    """One finished step as a line of text: area, step and the numbers it reported."""
    return f"{event['focus_area']}: {event['step']} — {event.get('detail', '')}"


def report_text(output: dict[str, Any]) -> str:
    """The report of a run's output ({'report': ...} or {'reports': ..., 'summary': ...})."""
    if "reports" in output:
        summary = output.get("summary", {})
        return f"# {summary.get('title', 'Executive summary')}\n\n{summary.get('markdown', '')}"
    return Report(**output["report"]).markdown()
