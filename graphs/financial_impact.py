"""Financial Impact: revenue, value at risk and where the portfolio earns its money."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import FINANCIAL as AREA
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
async def banking_financial_data_integration(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the financial KPIs for the run's scope."""
    k, update, _ = await load_overview(state, runtime, AREA)
    return update, overview_detail(
        k, f"{k['records']:,} recommendations, {d.money(k['total_product_sales'] or 0)} in sales"
    )


@area_step(AREA, 1)
async def banking_revenue_impact_calculation(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Break sales down by product type and segment."""
    (rev,) = await gather(state, runtime, "revenue")
    findings = number(state, AREA, d.revenue_concentration(rev))
    return {
        "evidence": [rev],
        "findings": findings,
    }, f"{rev['row_count']} revenue groups, {kinds(findings)}"


@area_step(AREA, 2)
async def customer_lifetime_value_impact_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Weigh balances and sales by churn probability; relate churn to satisfaction."""
    var, churn, corr = await gather(
        state, runtime, "value_at_risk", "churn_by_satisfaction", "correlations"
    )
    churn_pairs = {
        "rows": [
            r
            for r in corr["rows"]
            if "customer_churn_probability" in (r["column_a"], r["column_b"])
        ],
        "id": corr["id"],
    }
    found = d.value_at_risk(var) + d.churn_by_stage(var) + d.correlations(churn_pairs, limit=2)
    findings = number(state, AREA, found)
    customers = sum(r["customers"] or 0 for r in var["rows"] if r["breakdown"] == "total")
    detail = f"{customers:,} customers valued, {kinds(findings)}"
    return {"evidence": [var, churn, corr], "findings": findings}, detail


@area_step(AREA, 3)
async def banking_portfolio_efficiency_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Compare segments' balances and conversion; size the cross-sell pool."""
    profile, var, pool, acc = await gather(
        state,
        runtime,
        "segment_profile",
        "value_at_risk",
        "high_affinity_unconverted",
        "acceptance_rates",
    )
    found = d.segment_balances(var) + d.unconverted(pool) + d.lagging_cells(acc, limit=2)
    findings = number(state, AREA, found)
    return {"evidence": [profile, var, pool, acc], "findings": findings}, (
        f"{profile['row_count']} segments, {kinds(findings)}"
    )


ai_banking_financial_modeling = analysis_node(AREA, 4)

banking_economics_report_generation = report_node(AREA, 5)

builder = linear_builder(
    AREA,
    [
        banking_financial_data_integration,
        banking_revenue_impact_calculation,
        customer_lifetime_value_impact_assessment,
        banking_portfolio_efficiency_analysis,
        ai_banking_financial_modeling,
        banking_economics_report_generation,
    ],
)
graph = builder.compile(name=AREA.slug)
