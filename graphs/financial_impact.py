"""Financial Impact: revenue, value at risk and where the portfolio earns its money."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs import detectors as d
from graphs.areas import FINANCIAL as AREA
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
async def banking_financial_data_integration(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Load the financial KPIs; scan the scope for insights and data problems."""
    k, update, _ = await load_overview(state, runtime, AREA)
    return update, overview_detail(
        k,
        f"{k['records']:,} recommendations, {d.money(k['total_product_sales'] or 0)} in sales; "
        f"{engine_detail(update['evidence'])}",
    )


@area_step(AREA)
async def banking_revenue_impact_calculation(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Break sales down by product type and segment; price the groups that lag."""
    insights, problems, rev = await gather(state, runtime, INSIGHTS, QUALITY, "revenue")
    findings = tell(state, AREA, 1, [insights, problems], d.revenue_concentration(rev))
    return {
        "evidence": [insights, problems, rev],
        "findings": findings,
    }, f"{rev['row_count']} revenue groups, {kinds(findings)}"


@area_step(AREA)
async def customer_lifetime_value_impact_assessment(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Weigh balances and sales by churn; tell where churn departs and what it risks."""
    insights, problems, var, churn, corr = await gather(
        state, runtime, INSIGHTS, QUALITY, "value_at_risk", "churn_by_satisfaction",
        "correlations",
    )  # fmt: skip
    churn_pairs = {
        "rows": [
            r
            for r in corr["rows"]
            if "customer_churn_probability" in (r["column_a"], r["column_b"])
        ],
        "id": corr["id"],
    }
    found = d.value_at_risk(var) + d.correlations(churn_pairs, limit=2)
    findings = tell(state, AREA, 2, [insights, problems], found)
    customers = sum(r["customers"] or 0 for r in var["rows"] if r["breakdown"] == "total")
    detail = f"{customers:,} customers valued, {kinds(findings)}"
    return {"evidence": [insights, problems, var, churn, corr], "findings": findings}, detail


@area_step(AREA)
async def banking_portfolio_efficiency_analysis(
    state: State, runtime: Runtime[Context]
) -> tuple[dict[str, Any], str]:
    """Tell where balances and values depart; size the cross-sell pool."""
    insights, problems, profile, pool = await gather(
        state, runtime, INSIGHTS, QUALITY, "segment_profile", "high_affinity_unconverted"
    )
    findings = tell(state, AREA, 3, [insights, problems], d.unconverted(pool))
    return {"evidence": [insights, problems, profile, pool], "findings": findings}, (
        f"{profile['row_count']} segments, {kinds(findings)}"
    )


ai_banking_financial_modeling = analysis_node(AREA)

banking_economics_report_generation = report_node(AREA)

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
