"""Overall Performance: how well products are matched to customers, and why."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import OVERALL as AREA
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
async def banking_customer_data_initialization(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the portfolio's KPIs and distributions for the run's scope."""
    k, update, (dist,) = await load_overview(state, runtime, AREA, "distributions")
    products = sum(1 for r in dist["rows"] if r["dimension"] == "product_type")
    detail = overview_detail(
        k,
        f"{k['records']:,} recommendations, {products} product types, "
        f"acceptance {d.pct(k['acceptance_rate'] or 0)}",
    )
    return update, detail


@area_step(AREA, 1)
async def product_matching_performance_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Measure acceptance by affinity, score, stage and segment x product."""
    (acc,) = await gather(state, runtime, "acceptance_rates")
    found = (
        d.band_acceptance(acc, "affinity_band", "affinity", "affinity_acceptance")
        + d.band_acceptance(acc, "score_band", "recommendation score", "score_acceptance")
        + d.group_acceptance(acc, "lifecycle_stage", "lifecycle stage", "stage_acceptance")
        + d.lagging_cells(acc)
    )
    findings = number(state, AREA, found)
    return {
        "evidence": [acc],
        "findings": findings,
    }, f"{acc['row_count']} groups, {kinds(findings)}"


@area_step(AREA, 2)
async def banking_pattern_recognition(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Find behaviour patterns: correlations, segment balances, churn by stage."""
    corr, profile, var = await gather(
        state, runtime, "correlations", "segment_profile", "value_at_risk"
    )
    found = d.correlations(corr) + d.segment_balances(var) + d.churn_by_stage(var)
    findings = number(state, AREA, found)
    return {"evidence": [corr, profile, var], "findings": findings}, (
        f"{corr['row_count']} column pairs, {profile['row_count']} segments, {kinds(findings)}"
    )


ai_banking_intelligence_processing = analysis_node(AREA, 3)

financial_services_report_compilation = report_node(AREA, 4)

builder = linear_builder(
    AREA,
    [
        banking_customer_data_initialization,
        product_matching_performance_assessment,
        banking_pattern_recognition,
        ai_banking_intelligence_processing,
        financial_services_report_compilation,
    ],
)
graph = builder.compile(name=AREA.slug)
