"""Strategic Recommendations: where personalisation works, adoption, and the roadmap."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import STRATEGIC as AREA
from graphs.context import Context
from graphs.engine import INSIGHTS, QUALITY
from graphs.state import State
from graphs.steps import (
    analysis_node,
    area_step,
    engine_detail,
    gather,
    kinds,
    linear_builder,
    load_overview,
    overview_detail,
    report_node,
    tell,
)


@area_step(AREA)
async def banking_technology_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the portfolio context; scan the scope for insights and data problems."""
    k, update, _ = await load_overview(state, runtime, AREA, "distributions")
    score = k["avg_recommendation_score"]
    return update, overview_detail(
        k,
        f"{k['records']:,} recommendations, average score {score or 0:.2f}; "
        f"{engine_detail(update['evidence'])}",
    )


@area_step(AREA)
async def financial_services_competitive_advantage_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Test whether bands of score and affinity tell acceptance apart."""
    insights, problems, acc = await gather(state, runtime, INSIGHTS, QUALITY, "acceptance_rates")
    findings = tell(state, AREA, 1, [insights, problems])
    detail = kinds(findings) if findings else "personalisation shows no material effect"
    return {"evidence": [insights, problems, acc], "findings": findings}, detail


@area_step(AREA)
async def emerging_fintech_integration(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Read adoption over time and by group, and the open pipeline."""
    insights, problems, trend, dist = await gather(
        state, runtime, INSIGHTS, QUALITY, "monthly_trend", "distributions"
    )
    findings = tell(state, AREA, 2, [insights, problems], d.pipeline_backlog(dist))
    return {"evidence": [insights, problems, trend, dist], "findings": findings}, (
        f"{trend['row_count']} months, {kinds(findings)}"
    )


@area_step(AREA)
async def digital_banking_strategy_development(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Prioritise by where behaviour departs: churn, satisfaction, balances, activity."""
    insights, problems, var = await gather(state, runtime, INSIGHTS, QUALITY, "value_at_risk")
    findings = tell(state, AREA, 3, [insights, problems])
    return {"evidence": [insights, problems, var], "findings": findings}, kinds(findings)


ai_banking_strategic_processing = analysis_node(AREA)

digital_banking_report_generation = report_node(AREA)

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
