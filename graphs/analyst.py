"""The AI step: the selected model turns findings and evidence into narrative and actions.

The model loop: the model gets the prompt of `graphs.prompts` and answers with JSON
matching `Analysis`, citing finding ids. A tool-calling model may run catalog metrics or
guarded SQL first, at most `Context.max_tool_calls` times; what those return becomes
evidence too. The `offline` model (`graphs.offline`) writes the same structure with
fixed rules.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from graphs.areas import FocusArea
from graphs.context import Context
from graphs.models import OFFLINE, OFFLINE_LABEL, ModelError, build_chat_model
from graphs.offline import offline_analysis
from graphs.prompts import chat_messages, prompt, prompt_tokens
from graphs.report import Analysis, Finding
from graphs.resources import warehouse_for
from graphs.tracing import span
from tools.agent_tools import ROW_CAP, build_tools, evidence_text, tool_error
from tools.guard import GuardRejection, run_sql
from tools.metrics import UnknownMetric, run_metric
from tools.warehouse import WarehouseError


async def call_model(model: Any, messages: list[BaseMessage], ctx: Context) -> AIMessage:
    """Call the model with a timeout, retrying with exponential backoff."""
    last: BaseException | None = None
    for attempt in range(ctx.model_retries + 1):
        if attempt:
            await asyncio.sleep(min(2 ** (attempt - 1), 30))  # backoff between retries
        inputs = {"model": ctx.model, "attempt": attempt + 1, "messages": chat_messages(messages)}
        try:
            with span("model", "CHAT_MODEL", inputs) as s:
                reply = await asyncio.wait_for(model.ainvoke(messages), ctx.model_timeout_s)
                if s is not None:
                    s.set_outputs(
                        {
                            "content": str(reply.content),
                            "tool_calls": [
                                {"name": c["name"], "args": c.get("args", {})}
                                for c in getattr(reply, "tool_calls", None) or []
                            ],
                        }
                    )
            return reply
        except TimeoutError as e:
            last = e
        except Exception as e:  # providers raise many types; all get the same retry budget
            last = e
    raise ModelError(
        f"Model {ctx.model!r} failed after {ctx.model_retries + 1} attempt(s): "
        f"{type(last).__name__}: {last}. The run stopped before this step and can be resumed."
    ) from last


def parse_analysis(text: str) -> Analysis:
    """Parse the model's JSON answer (code fences and surrounding prose tolerated)."""
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        raise ValueError("the answer holds no JSON object")
    return Analysis.model_validate_json(match.group(0))


async def chat_analysis(
    model: BaseChatModel, area: FocusArea, state: dict[str, Any], ctx: Context, scope: str
) -> tuple[Analysis, list[dict[str, Any]], dict[str, Any]]:
    """Run the tool loop and return the analysis, new evidence and call statistics."""
    warehouse = await asyncio.to_thread(warehouse_for, ctx.warehouse)
    filters = ctx.filters()
    tools = build_tools(warehouse, filters=filters)
    bound = model.bind_tools(tools) if ctx.max_tool_calls > 0 else model
    messages = prompt(area, state, scope)
    new_evidence: list[dict[str, Any]] = []
    stats: dict[str, Any] = {
        "tool_calls": 0,
        "rejections": [],
        "model_calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    next_id = len(state.get("evidence", [])) + 1
    while True:
        reply = await call_model(bound, messages, ctx)
        stats["model_calls"] += 1
        usage = getattr(reply, "usage_metadata", None) or {}
        stats["input_tokens"] += usage.get("input_tokens", 0)
        stats["output_tokens"] += usage.get("output_tokens", 0)
        messages.append(reply)
        calls = reply.tool_calls or []
        if not calls:
            try:
                return parse_analysis(str(reply.content)), new_evidence, stats
            except ValueError as e:
                if stats["model_calls"] > ctx.max_tool_calls + 2:
                    raise ModelError(
                        f"Model {ctx.model!r} did not return a valid analysis: {e}"
                    ) from e
                messages.append(
                    HumanMessage(
                        f"That was not a valid answer ({e}). Reply with the JSON object only."
                    )
                )
                continue
        for call in calls:
            if stats["tool_calls"] >= ctx.max_tool_calls:
                text = "Error: the tool budget is spent; answer now with the JSON object."
            else:
                stats["tool_calls"] += 1
                text, ev = await _run_tool(
                    call["name"], call.get("args", {}), tools, warehouse, filters, ctx, stats
                )
                if ev is not None:
                    new_evidence.append({"id": f"E{next_id}", **ev.model_dump(mode="json")})
                    next_id += 1
                    text = f"[evidence E{next_id - 1}] {text}"
            messages.append(ToolMessage(text, tool_call_id=call["id"]))


async def _run_tool(
    name: str,
    args: dict[str, Any],
    tools: list[Any],
    warehouse: Any,
    filters: Any,
    ctx: Context,
    stats: dict[str, Any],
) -> tuple[str, Any]:
    """Execute one tool call; guard rejections and bad requests go back as text."""
    with span(f"tool:{name}", "TOOL", {"args": args}):
        try:
            if name == "run_catalog_metric":
                ev = await asyncio.to_thread(
                    run_metric,
                    warehouse,
                    args.get("metric_id", ""),
                    filters,
                    args.get("parameters") or {},
                    timeout_s=ctx.query_timeout_s,
                )
                return evidence_text(ev), ev
            if name == "run_guarded_sql":
                ev = await asyncio.to_thread(
                    functools.partial(
                        run_sql,
                        warehouse,
                        str(args.get("sql", "")),
                        row_cap=ROW_CAP,
                        timeout_s=ctx.query_timeout_s,
                        scope=filters,
                    )
                )
                return evidence_text(ev), ev
        except GuardRejection as e:
            stats["rejections"].append({"sql": args.get("sql", ""), "reason": e.reason})
            return tool_error(e), None
        except (UnknownMetric, ValueError, WarehouseError) as e:
            return tool_error(e), None
        for t in tools:
            if t.name == name:
                return str(await t.ainvoke(args)), None
        return f"Error: no tool named {name!r}", None


async def analyse(
    area: FocusArea, state: dict[str, Any], ctx: Context
) -> tuple[dict[str, Any], str]:
    """Run the AI step for `area`: return the state update and the detail line."""
    findings = [Finding(**f) for f in state.get("findings", [])]
    scope = ctx.filters().describe()
    # With no record in the scope there is nothing for a model to read: no call is made.
    empty = any(f.kind == "scope" and not f.sample_size for f in findings)
    if ctx.model == OFFLINE or empty:
        analysis = offline_analysis(area, findings, state.get("question", ""))
        label = OFFLINE_LABEL
        if ctx.model != OFFLINE:
            label += f" ({ctx.model} was not called: no record matches the scope)"
        meta: dict[str, Any] = {
            "model": ctx.model,
            "label": label,
            "tool_calls": 0,
            "model_calls": 0,
            "rejections": [],
            "input_tokens": 0,
            "output_tokens": 0,
        }
        new_evidence: list[dict[str, Any]] = []
    else:
        model = build_chat_model(ctx.model, ctx)
        analysis, new_evidence, stats = await chat_analysis(model, area, state, ctx, scope)
        meta = {"model": ctx.model, "label": f"the model {ctx.model}", **stats}
    # The size of the first prompt (the one a model gets, or would get): bounded by design.
    meta["prompt_tokens_estimate"] = prompt_tokens(prompt(area, state, scope))
    update: dict[str, Any] = {"analysis": {**analysis.model_dump(mode="json"), **meta}}
    if new_evidence:
        update["evidence"] = new_evidence
    detail = (
        f"{meta['model']}: {len(analysis.sections)} sections, "
        f"{len(analysis.recommendations)} recommendations, "
        f"{meta['tool_calls']} tool calls"
    )
    return update, detail
