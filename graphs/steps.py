"""The step wrapper every node goes through, and the data helpers steps share.

`area_step` turns `async def step(state, runtime) -> (update, detail)` into a graph node
that emits a `step_start` custom stream event, appends a step record (with the detail line
of the numbers the step computed) to the state and opens an MLflow span. Evidence and
findings get their ids here, once.

A step's record is part of its state update, so it is checkpointed with the step's
results: the one fact of the step having finished. `service.runs.run_focus` announces
`step_finish` from the checkpoints as they are stored, never before.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from graphs.analyst import analyse
from graphs.areas import FocusArea
from graphs.compose import build_report
from graphs.context import Context
from graphs.detectors import SMALL_SCOPE, portfolio_overview, scope_too_small
from graphs.engine import (
    ENGINE_METRICS,
    INSIGHTS,
    QUALITY,
    chosen,
    findings,
    quality_findings,
    run_engine,
)
from graphs.report import Finding
from graphs.resources import warehouse_for
from graphs.state import InputState, OutputState, State
from graphs.tracing import span
from tools.metrics import MetricBatch, scope_coverage

StepBody = Callable[[State, Runtime[Context]], Awaitable[tuple[dict[str, Any], str]]]
Node = Callable[[State, Runtime[Context]], Awaitable[dict[str, Any]]]


def snake(name: str) -> str:
    """Return a step name in snake_case ('AI Banking Intelligence ...' -> 'ai_banking_...')."""
    return "_".join(name.lower().replace("-", " ").split())


def area_step(area: FocusArea) -> Callable[[StepBody], Node]:
    """Wrap a step body as the node of the step of `area` it is named after."""

    def wrap(body: StepBody) -> Node:
        names = [snake(s.name) for s in area.steps]
        if body.__name__ not in names:
            raise ValueError(
                f"step function {body.__name__} is named after no step of {area.name}; "
                f"name it one of: {', '.join(names)}"
            )
        index = names.index(body.__name__)
        name = area.steps[index].name

        async def node(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
            writer = runtime.stream_writer
            total = len(area.steps)
            writer(
                {
                    "type": "step_start",
                    "focus_area": area.slug,
                    "step": name,
                    "index": index + 1,
                    "total": total,
                }
            )
            started = time.perf_counter()
            with span(name, "CHAIN", {"focus_area": area.slug}) as s:
                update, detail = await body(state, runtime)
                if s is not None:
                    s.set_outputs({"detail": detail})
            record = {
                "focus_area": area.slug,
                "step": name,
                "index": index + 1,
                "total": total,
                "detail": detail,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            update = dict(update)
            known = {e["id"] for e in state.get("evidence", [])}
            if "evidence" in update:
                update["evidence"] = [stored(e) for e in update["evidence"] if e["id"] not in known]
            update["steps"] = [record]
            if not state.get("focus_area"):
                update["focus_area"] = area.slug
            return update

        node.__name__ = body.__name__
        node.__qualname__ = body.__qualname__
        node.__doc__ = body.__doc__
        return node

    return wrap


def step_key(record: dict[str, Any]) -> str:
    """Return what names a step within a run: its focus area and step name."""
    return f"{record.get('focus_area', '')}:{record.get('step', '')}"


def request_key(metric_id: str, params: dict[str, Any] | None = None) -> str:
    """Return the key under which a metric request's evidence is reused within a run."""
    return f"{metric_id}:{json.dumps(params or {}, sort_keys=True)}"


async def gather(
    state: State, runtime: Runtime[Context], *requests: str | tuple[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run catalog metrics in the run's scope (off the event loop); return Evidence dicts.

    A metric an earlier step already ran with the same parameters is not run again: its
    evidence is returned as it is (the step wrapper keeps it from being added twice).
    Evidence the portfolio gathered for every area (`Context.shared_evidence`) is
    returned whole, marked `shared` (the step wrapper stores it as a reference). The rest
    run as one `MetricBatch`: the cell metrics among them share one pass of the table.
    """
    ctx = runtime.context
    done = {e.get("request"): e for e in state.get("evidence", []) if e.get("request")}
    shared = {e.get("request"): e for e in ctx.shared_evidence if e.get("request")}
    found: list[dict[str, Any] | None] = []
    pending: list[tuple[int, str, dict[str, Any]]] = []
    for request in requests:
        metric_id, params = (request, {}) if isinstance(request, str) else request
        key = request_key(metric_id, params)
        if key in done:
            found.append(done[key])
        elif key in shared:  # gathered once for the whole portfolio run, same scope
            found.append({**shared[key], "id": None, "shared": True})
        else:
            found.append(None)
            pending.append((len(found) - 1, metric_id, params))
    for position, ev in zip(
        (p for p, _, _ in pending), await _run(ctx, [(m, p) for _, m, p in pending]), strict=True
    ):
        found[position] = ev
    out: list[dict[str, Any]] = []
    next_id = len(state.get("evidence", []))
    for ev_dict in found:
        assert ev_dict is not None
        if ev_dict["id"] is None:
            next_id += 1
            ev_dict = {**ev_dict, "id": f"E{next_id}"}
        out.append(ev_dict)
    return await with_rows(out, runtime)


async def _run(ctx: Context, requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run metric requests in the run's scope; return their Evidence dicts, in order.

    The insight engine's two (`ENGINE_METRICS`) come from one run of the engine; the
    catalog's run as one batch.
    """
    if not requests:
        return []
    warehouse = await asyncio.to_thread(warehouse_for, ctx.warehouse)
    out: dict[int, dict[str, Any]] = {}
    if any(m in ENGINE_METRICS for m, _ in requests):
        with span("query:insights", "RETRIEVER") as s:
            found = await asyncio.to_thread(run_engine, warehouse, ctx.filters())
            if s is not None:
                s.set_outputs({e["metric_id"]: e["row_count"] for e in found})
        by_id = {e["metric_id"]: e for e in found}
        out = {j: by_id[m] for j, (m, _) in enumerate(requests) if m in ENGINE_METRICS}
    rest = [(j, r) for j, r in enumerate(requests) if j not in out]
    for (j, _), ev in zip(
        rest, await _run_catalog(ctx, warehouse, [r for _, r in rest]), strict=True
    ):
        out[j] = ev
    return [out[j] for j in range(len(requests))]


async def _run_catalog(
    ctx: Context, warehouse: Any, requests: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Run catalog metric requests as one batch; return their Evidence dicts."""
    if not requests:
        return []
    batch = MetricBatch(warehouse, requests, ctx.filters(), timeout_s=ctx.query_timeout_s)
    out = []
    try:
        if batch.shared:
            metrics = [requests[j][0] for j in batch.shared]
            with span("query:cells", "RETRIEVER", {"metrics": metrics}) as s:
                cells = await asyncio.to_thread(batch.run_cells)
                if s is not None:
                    s.set_outputs({"cells": cells, "elapsed_ms": batch.cells_ms})
        for j, (metric_id, params) in enumerate(requests):
            with span(f"query:{metric_id}", "RETRIEVER", {"params": params}) as s:
                ev = await asyncio.to_thread(batch.run, j)
                if s is not None:
                    s.set_outputs({"row_count": ev.row_count, "sql": ev.sql, "cached": ev.cached})
            key = request_key(metric_id, params)
            out.append({"id": None, "request": key, **ev.model_dump(mode="json")})
    finally:
        batch.close()
    return out


# What a reference to shared evidence leaves out (and `with_rows` puts back).
HELD_ELSEWHERE = ("rows", "sql", "columns")


def stored(evidence: dict[str, Any]) -> dict[str, Any]:
    """Return evidence as the state keeps it: shared evidence as a reference."""
    if evidence.get("shared"):
        return {k: v for k, v in evidence.items() if k not in HELD_ELSEWHERE}
    return evidence


async def with_rows(
    evidence: list[dict[str, Any]], runtime: Runtime[Context]
) -> list[dict[str, Any]]:
    """Return `evidence` with the rows of shared references filled back in.

    From the portfolio's shared evidence when this process has it; else (a run resumed
    in a new process) the metrics run again in the same scope, as one batch.
    """
    missing = [e for e in evidence if "rows" not in e]
    if not missing:
        return evidence
    ctx = runtime.context
    held = {e["request"]: e for e in ctx.shared_evidence if e.get("request")}
    again = [e for e in missing if e["request"] not in held]
    if again:
        requests = [(e["metric_id"], _params(e)) for e in again]
        for e, ev in zip(again, await _run(ctx, requests), strict=True):
            held[e["request"]] = ev
    return [
        e if "rows" in e else {**e, **{k: held[e["request"]][k] for k in HELD_ELSEWHERE}}
        for e in evidence
    ]


def _params(evidence: dict[str, Any]) -> dict[str, Any]:
    """Return the metric parameters a request key was made from."""
    _, _, params = str(evidence["request"]).partition(":")
    return dict(json.loads(params or "{}"))


async def load_overview(
    state: State, runtime: Runtime[Context], area: FocusArea, *more: str
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run the KPIs, the insight engine (and `more` metrics) for an area's first step.

    Returns the KPI row, the step's update (evidence; the portfolio overview and the
    engine's findings the first step's feeds take, the data problems) and the evidence
    of `more`, in order.
    """
    kpis, insights, problems, *rest = await gather(state, runtime, "kpis", INSIGHTS, QUALITY, *more)
    evidence = [kpis, insights, problems, *rest]
    found = portfolio_overview(kpis)
    k = kpis["rows"][0]
    if (k.get("records") or 0) < SMALL_SCOPE:  # empty, or too small to compare anything
        ctx = runtime.context
        warehouse = await asyncio.to_thread(warehouse_for, ctx.warehouse)
        with span("query:scope_coverage", "RETRIEVER"):
            coverage = await asyncio.to_thread(scope_coverage, warehouse, ctx.filters())
        ids = [int(e["id"][1:]) for e in [*state.get("evidence", []), *evidence]]
        covered = {"id": f"E{max(ids, default=0) + 1}", **coverage.model_dump(mode="json")}
        evidence.append(covered)
        found += scope_too_small(covered, ctx.filters().model_dump(exclude_none=True))
    update = {"evidence": evidence, "findings": tell(state, area, 0, [insights, problems], found)}
    return k, update, rest


def engine_detail(evidence: list[dict[str, Any]]) -> str:
    """What the engine read and found, for a first step's detail line."""
    insights = next(e for e in evidence if e["metric_id"] == INSIGHTS)
    problems = next(e for e in evidence if e["metric_id"] == QUALITY)
    read = insights.get("scanned") or {}
    return (
        f"{read.get('slices', 0):,} slices and {read.get('cells', 0):,} cells on "
        f"{read.get('measures', 0)} measures scanned, {read.get('found', 0):,} insights, "
        f"{problems['row_count']} data problems"
    )


def _told(finding: Finding | dict[str, Any]) -> tuple[Any, ...]:
    f = finding if isinstance(finding, dict) else finding.model_dump()
    return f["kind"], f.get("measure", ""), tuple(sorted((f.get("labels") or {}).items()))


def tell(
    state: State,
    area: FocusArea,
    index: int,
    engine: list[dict[str, Any]],
    more: list[Finding] | None = None,
) -> list[dict[str, Any]]:
    """Number what step `index` tells: the engine's findings it takes, then `more`.

    `engine` is the engine's evidence (`INSIGHTS`, `QUALITY`); which of its findings the
    step takes is `graphs.engine.chosen`; a finding an earlier step told is not told again.
    """
    told = {_told(f) for f in state.get("findings", [])}
    candidates: list[Finding] = []
    for ev in engine:
        candidates += findings(ev) if ev["metric_id"] == INSIGHTS else quality_findings(ev)
    fresh = [f for f in candidates if _told(f) not in told]
    picked = chosen(area, area.steps[index], fresh)
    return number(state, area, [*picked, *(more or [])])


def overview_detail(k: dict[str, Any], text: str) -> str:
    """Return a first step's detail line, or that no recommendation matches the scope."""
    return text if k.get("records") else "no recommendation matches the scope"


def number(state: State, area: FocusArea, findings: list[Finding]) -> list[dict[str, Any]]:
    """Give new findings their ids (OPT-1, OPT-2, ...) and return them as dicts."""
    start = len(state.get("findings", []))
    return [
        f.model_copy(update={"id": f"{area.prefix}-{start + i + 1}"}).model_dump(mode="json")
        for i, f in enumerate(findings)
    ]


def kinds(findings: list[dict[str, Any]]) -> str:
    """Summarise findings for a detail line: '2 findings (cell, correlation)'."""
    if not findings:
        return "no material finding"
    names = ", ".join(dict.fromkeys(f["kind"] for f in findings))
    return f"{len(findings)} finding{'s' if len(findings) != 1 else ''} ({names})"


def linear_builder(area: FocusArea, nodes: list[Node]) -> StateGraph[Any, Any, Any, Any]:
    """Return a builder running `nodes` in the order of the area's documented steps."""
    if len(nodes) != len(area.steps):
        raise ValueError(f"{area.name} has {len(area.steps)} steps; got {len(nodes)} nodes")
    builder = StateGraph(
        State, context_schema=Context, input_schema=InputState, output_schema=OutputState
    )
    previous = START
    for step, node in zip(area.steps, nodes, strict=True):
        action: Any = node  # the wrapped node keeps the (state, runtime) signature
        builder.add_node(step.name, action)
        builder.add_edge(previous, step.name)
        previous = step.name
    builder.add_edge(previous, END)
    return builder


def analysis_node(area: FocusArea) -> Node:
    """Return the AI step of `area` (its next to last): the model writes narrative and actions."""
    step = area.steps[-2]

    async def body(state: State, runtime: Runtime[Context]) -> tuple[dict[str, Any], str]:
        evidence = await with_rows(state.get("evidence", []), runtime)
        return await analyse(area, {**state, "evidence": evidence}, runtime.context)

    body.__name__ = snake(step.name)
    body.__doc__ = f"{step.description}."
    return area_step(area)(body)


def report_node(area: FocusArea) -> Node:
    """Return the report step of `area` (its last): build the Report, check its grounding."""
    step = area.steps[-1]

    async def body(state: State, runtime: Runtime[Context]) -> tuple[dict[str, Any], str]:
        # Composing and checking the report is CPU work (tens of ms): off the event loop,
        # which a service shares with every other run and event stream.
        evidence = await with_rows(state.get("evidence", []), runtime)
        return await asyncio.to_thread(
            build_report, area, {**state, "evidence": evidence}, runtime.context
        )

    body.__name__ = snake(step.name)
    body.__doc__ = f"{step.description}."
    return area_step(area)(body)
