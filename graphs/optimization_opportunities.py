"""Optimization Opportunities: where product matching loses customers it should win."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import OPTIMIZATION as AREA
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
async def banking_optimization_data_preparation(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the KPIs and distributions; scan the scope for insights and data problems."""
    k, update, _ = await load_overview(state, runtime, AREA, "distributions")
    return update, overview_detail(
        k,
        f"{k['records']:,} recommendations, acceptance {d.pct(k['acceptance_rate'] or 0)}; "
        f"{engine_detail(update['evidence'])}",
    )


@area_step(AREA)
async def financial_product_inefficiency_detection(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Find the groups and cells that lag, and high-affinity leads left unconverted."""
    insights, problems, pool = await gather(
        state, runtime, INSIGHTS, QUALITY, "high_affinity_unconverted"
    )
    findings = tell(state, AREA, 1, [insights, problems], d.unconverted(pool))
    return {"evidence": [insights, problems, pool], "findings": findings}, kinds(findings)


@area_step(AREA)
async def banking_correlation_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Relate acceptance to bands of the numeric columns, behaviour and correlations."""
    insights, problems, corr = await gather(state, runtime, INSIGHTS, QUALITY, "correlations")
    findings = tell(state, AREA, 2, [insights, problems], d.correlations(corr, limit=3))
    return {"evidence": [insights, problems, corr], "findings": findings}, (
        f"{corr['row_count']} column pairs, {kinds(findings)}"
    )


@area_step(AREA)
async def core_banking_system_integration_optimization(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Check the delivery pipeline: open backlog and breaks over time."""
    insights, problems, trend, dist = await gather(
        state, runtime, INSIGHTS, QUALITY, "monthly_trend", "distributions"
    )
    findings = tell(state, AREA, 3, [insights, problems], d.pipeline_backlog(dist))
    return {"evidence": [insights, problems, trend, dist], "findings": findings}, (
        f"{trend['row_count']} months, {kinds(findings)}"
    )


ai_banking_optimization_intelligence = analysis_node(AREA)

banking_strategy_finalization = report_node(AREA)

builder = linear_builder(
    AREA,
    [
        banking_optimization_data_preparation,
        financial_product_inefficiency_detection,
        banking_correlation_analysis,
        core_banking_system_integration_optimization,
        ai_banking_optimization_intelligence,
        banking_strategy_finalization,
    ],
)
graph = builder.compile(name=AREA.slug)
