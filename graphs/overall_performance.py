"""Overall Performance: how well products are matched to customers, and why."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import OVERALL as AREA
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
async def banking_customer_data_initialization(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the KPIs and distributions; scan the scope for insights and data problems."""
    k, update, (dist,) = await load_overview(state, runtime, AREA, "distributions")
    products = sum(1 for r in dist["rows"] if r["dimension"] == "product_type")
    detail = overview_detail(
        k,
        f"{k['records']:,} recommendations, {products} product types, "
        f"acceptance {d.pct(k['acceptance_rate'] or 0)}; {engine_detail(update['evidence'])}",
    )
    return update, detail


@area_step(AREA)
async def product_matching_performance_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Tell where acceptance, scores and affinity depart: slices and cells."""
    insights, problems, acc = await gather(state, runtime, INSIGHTS, QUALITY, "acceptance_rates")
    findings = tell(state, AREA, 1, [insights, problems])
    return {
        "evidence": [insights, problems, acc],
        "findings": findings,
    }, f"{acc['row_count']} acceptance groups, {kinds(findings)}"


@area_step(AREA)
async def banking_pattern_recognition(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Tell behaviour patterns: groups that depart, breaks over time, correlations."""
    insights, problems, corr, profile = await gather(
        state, runtime, INSIGHTS, QUALITY, "correlations", "segment_profile"
    )
    findings = tell(state, AREA, 2, [insights, problems], d.correlations(corr))
    return {"evidence": [insights, problems, corr, profile], "findings": findings}, (
        f"{corr['row_count']} column pairs, {profile['row_count']} segments, {kinds(findings)}"
    )


ai_banking_intelligence_processing = analysis_node(AREA)

financial_services_report_compilation = report_node(AREA)

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
