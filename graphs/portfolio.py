"""Portfolio: the four focus areas side by side, then an executive summary across them.

First the metrics the four areas read are run once, in the run's scope; then each focus
area runs as its own subgraph on that shared evidence (its steps stream and checkpoint
under its own namespace); the four start together and the summary waits for all of them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Annotated, Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.channels import DeltaChannel, UntrackedValue
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from graphs.areas import FOCUS_AREAS
from graphs.context import Context
from graphs.engine import INSIGHTS, QUALITY
from graphs.registry import AREA_GRAPHS
from graphs.report import Finding, Report
from graphs.state import Appended
from graphs.steps import gather
from graphs.tracing import span

SHARED_STEP = "Portfolio Data Preparation"
SUMMARY_STEP = "Executive Summary"
# What the four areas' data steps read: gathered once, shared by all four (a test checks
# that no area queries anything else).
SHARED_METRICS = (
    "kpis",
    INSIGHTS,
    QUALITY,
    "distributions",
    "acceptance_rates",
    "correlations",
    "segment_profile",
    "value_at_risk",
    "revenue",
    "churn_by_satisfaction",
    "monthly_trend",
    "high_affinity_unconverted",
)


def merge(current: dict[str, Any] | None, writes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge each write's keys into the dict, in order (a reducer for a `DeltaChannel`)."""
    out = dict(current or {})
    for items in writes:
        out.update(items)
    return out


class PortfolioState(TypedDict):
    """The four reports as they finish, the step records, and the summary.

    Each is stored once, as written (`DeltaChannel`), not again at every checkpoint. The
    evidence gathered for the four areas is never stored (`UntrackedValue`): a run that
    resumes after it was gathered has the areas gather it again, in their own steps.
    """

    question: str
    shared_evidence: Annotated[list[dict[str, Any]], UntrackedValue(list)]
    reports: Annotated[dict[str, dict[str, Any]], DeltaChannel(merge)]
    steps: Annotated[list[dict[str, Any]], Appended]
    summary: dict[str, Any]


class PortfolioInput(TypedDict, total=False):
    """What a caller may pass in: an optional question the narratives should answer."""

    question: str


class PortfolioOutput(TypedDict):
    """What a portfolio run returns."""

    reports: dict[str, dict[str, Any]]
    steps: list[dict[str, Any]]
    summary: dict[str, Any]


def _area_node(slug: str) -> Any:
    area_graph: Any = AREA_GRAPHS[slug]

    async def run_area(
        state: PortfolioState, runtime: Runtime[Context], config: RunnableConfig
    ) -> dict[str, Any]:
        # The area's steps (and their queries and model calls) nest in a span of its own.
        # The shared evidence travels in the area's context: in its state every area
        # would store a copy of it.
        context = dataclasses.replace(
            runtime.context, shared_evidence=tuple(state.get("shared_evidence") or ())
        )
        with span(FOCUS_AREAS[slug].name, "AGENT", {"focus_area": slug}) as s:
            out = await area_graph.ainvoke(
                {"question": state.get("question", "")}, config, context=context
            )
            if s is not None:
                s.set_outputs({"headline": out["report"]["headline"]})
        return {"reports": {slug: out["report"]}, "steps": out["steps"]}

    run_area.__name__ = f"run_{slug.replace('-', '_')}"
    run_area.__doc__ = f"Run the {FOCUS_AREAS[slug].name} focus area."
    return run_area


async def portfolio_data_preparation(
    state: PortfolioState, runtime: Runtime[Context]
) -> dict[str, Any]:
    """Run each metric the four areas read once, in the run's scope, for all of them."""
    writer = runtime.stream_writer
    writer({"type": "step_start", "focus_area": "portfolio", "step": SHARED_STEP})
    started = time.perf_counter()
    evidence = await gather(cast(Any, {"evidence": []}), runtime, *SHARED_METRICS)
    rows = next(e for e in evidence if e["metric_id"] == "kpis")["rows"][0]["records"]
    detail = (
        f"{len(evidence)} metrics over {rows:,} recommendations, shared by the four areas, "
        f"in {time.perf_counter() - started:.1f} s"
    )
    record = {"focus_area": "portfolio", "step": SHARED_STEP, "detail": detail}
    return {"shared_evidence": evidence, "steps": [record]}


async def executive_summary(state: PortfolioState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Summarise the four reports: each headline, the strongest findings, the top actions."""
    writer = runtime.stream_writer
    writer({"type": "step_start", "focus_area": "portfolio", "step": SUMMARY_STEP})
    reports = [Report(**state["reports"][slug]) for slug in AREA_GRAPHS if slug in state["reports"]]
    rank = {"strong": 0, "moderate": 1, "descriptive": 2}
    strongest: list[Finding] = sorted(
        {
            f.kind + f.claim: f for r in reports for f in r.findings if f.strength != "descriptive"
        }.values(),
        key=lambda f: (rank[f.strength], -abs(f.effect_size or 0)),
    )[:5]
    lines = [f"- **{FOCUS_AREAS[r.focus_area].name}:** {r.headline}" for r in reports]
    actions = [
        f"- {r.recommendations[0].action} ({FOCUS_AREAS[r.focus_area].name})"
        for r in reports
        if r.recommendations
    ]
    ungrounded = sum(len(r.ungrounded) for r in reports)
    strong_lines = [f"- {f.claim} [{f.id}]" for f in strongest]
    # The four areas saw the same scope: when it was empty or small, say so (and what to
    # widen) once, first.
    scoped = next((f for r in reports for f in r.findings if f.kind == "scope"), None)
    body = "\n".join(
        [
            *(["## Scope", scoped.claim + f" [{scoped.id}]", ""] if scoped else []),
            "## Focus areas",
            *lines,
            "",
            "## Strongest findings",
            *(strong_lines or ["- None passed the thresholds."]),
            "",
            "## First actions",
            *(actions or ["- None."]),
        ]
    )
    summary = {
        "title": "FinMatch portfolio — executive summary",
        "scope": reports[0].scope if reports else runtime.context.filters().describe(),
        "markdown": body,
        "ungrounded_numbers": ungrounded,
    }
    detail = (
        f"{len(reports)} reports, {len(strongest)} strongest findings, "
        f"{ungrounded} ungrounded numbers"
    )
    record = {"focus_area": "portfolio", "step": SUMMARY_STEP, "detail": detail}
    return {"summary": summary, "steps": [record]}


builder = StateGraph(
    PortfolioState,
    context_schema=Context,
    input_schema=PortfolioInput,
    output_schema=PortfolioOutput,
)
builder.add_node(SHARED_STEP, portfolio_data_preparation)
builder.add_edge(START, SHARED_STEP)
for _slug in AREA_GRAPHS:
    builder.add_node(FOCUS_AREAS[_slug].name, _area_node(_slug))
    builder.add_edge(SHARED_STEP, FOCUS_AREAS[_slug].name)
builder.add_node(SUMMARY_STEP, executive_summary)
builder.add_edge([FOCUS_AREAS[s].name for s in AREA_GRAPHS], SUMMARY_STEP)
builder.add_edge(SUMMARY_STEP, END)

graph = builder.compile(name="portfolio")
