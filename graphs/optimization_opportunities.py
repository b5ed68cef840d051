"""Optimization Opportunities: where product matching loses customers it should win."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import OPTIMIZATION as AREA
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
async def banking_optimization_data_preparation(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the KPIs and distributions the optimisation starts from."""
    k, update, _ = await load_overview(state, runtime, AREA, "distributions")
    return update, overview_detail(
        k, f"{k['records']:,} recommendations, acceptance {d.pct(k['acceptance_rate'] or 0)}"
    )


@area_step(AREA, 1)
async def financial_product_inefficiency_detection(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Find segment x product cells that lag and high-affinity leads left unconverted."""
    acc, pool = await gather(state, runtime, "acceptance_rates", "high_affinity_unconverted")
    found = d.lagging_cells(acc) + d.unconverted(pool)
    findings = number(state, AREA, found)
    cells = sum(1 for r in acc["rows"] if r["breakdown"] == "segment_product")
    return {"evidence": [acc, pool], "findings": findings}, (
        f"{cells} segment x product cells tested, {kinds(findings)}"
    )


@area_step(AREA, 2)
async def banking_correlation_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Relate acceptance to affinity, lifecycle stage and the numeric columns."""
    corr, acc = await gather(state, runtime, "correlations", "acceptance_rates")
    found = (
        d.band_acceptance(acc, "affinity_band", "affinity", "affinity_acceptance")
        + d.group_acceptance(acc, "lifecycle_stage", "lifecycle stage", "stage_acceptance")
        + d.correlations(corr, limit=3)
    )
    findings = number(state, AREA, found)
    return {"evidence": [corr, acc], "findings": findings}, (
        f"{corr['row_count']} column pairs, {kinds(findings)}"
    )


@area_step(AREA, 3)
async def core_banking_system_integration_optimization(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Check the delivery pipeline: open backlog and conversion over time."""
    trend, dist = await gather(state, runtime, "monthly_trend", "distributions")
    found = d.pipeline_backlog(dist) + d.acceptance_trend(trend)
    findings = number(state, AREA, found)
    return {"evidence": [trend, dist], "findings": findings}, (
        f"{trend['row_count']} months, {kinds(findings)}"
    )


ai_banking_optimization_intelligence = analysis_node(AREA, 4)

banking_strategy_finalization = report_node(AREA, 5)

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
