"""Strategic Recommendations: where personalisation works, adoption, and the roadmap."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import STRATEGIC as AREA
from graphs.context import Context
from graphs.state import State
from graphs.steps import (
    analysis_node,
    area_step,
    gather,
    kinds,
    linear_builder,
    load_overview,
    number,
    overview_detail,
    report_node,
)


@area_step(AREA, 0)
async def banking_technology_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the portfolio context: KPIs and distributions."""
    k, update, _ = await load_overview(state, runtime, AREA, "distributions")
    score = k["avg_recommendation_score"]
    return update, overview_detail(
        k, f"{k['records']:,} recommendations, average score {score or 0:.2f}"
    )


@area_step(AREA, 1)
async def financial_services_competitive_advantage_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Test whether personalised scores and affinity predict acceptance."""
    (acc,) = await gather(state, runtime, "acceptance_rates")
    found = d.band_acceptance(
        acc, "score_band", "recommendation score", "score_acceptance"
    ) + d.band_acceptance(acc, "affinity_band", "affinity", "affinity_acceptance")
    findings = number(state, AREA, found)
    if not found:
        detail = "personalisation shows no material effect on acceptance"
    else:
        detail = f"{kinds(findings)}"
    return {"evidence": [acc], "findings": findings}, detail


@area_step(AREA, 2)
async def emerging_fintech_integration(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Read adoption over time and the open pipeline an integration would speed up."""
    trend, dist = await gather(state, runtime, "monthly_trend", "distributions")
    found = d.acceptance_trend(trend) + d.pipeline_backlog(dist)
    findings = number(state, AREA, found)
    return {"evidence": [trend, dist], "findings": findings}, (
        f"{trend['row_count']} months, {kinds(findings)}"
    )


@area_step(AREA, 3)
async def digital_banking_strategy_development(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Prioritise by adoption per lifecycle stage, churn risk and lagging offers."""
    acc, var = await gather(state, runtime, "acceptance_rates", "value_at_risk")
    found = (
        d.group_acceptance(acc, "lifecycle_stage", "lifecycle stage", "stage_acceptance")
        + d.churn_by_stage(var)
        + d.lagging_cells(acc, limit=2)
    )
    findings = number(state, AREA, found)
    return {"evidence": [acc, var], "findings": findings}, kinds(findings)


ai_banking_strategic_processing = analysis_node(AREA, 4)

digital_banking_report_generation = report_node(AREA, 5)

builder = linear_builder(
    AREA,
    [
        banking_technology_assessment,
        financial_services_competitive_advantage_analysis,
        emerging_fintech_integration,
        digital_banking_strategy_development,
        ai_banking_strategic_processing,
        digital_banking_report_generation,
    ],
)
graph = builder.compile(name=AREA.slug)
