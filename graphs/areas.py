"""The four focus areas: names, business challenge, agent solution, steps and sections.

Texts follow the FinMatch product description; the service and the UI show them, and the
graphs take their node names from `steps`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One documented workflow step (a graph node of the same name)."""

    name: str
    description: str


@dataclass(frozen=True)
class FocusArea:
    """A focus area and its agent workflow."""

    slug: str
    name: str
    prefix: str
    business_challenge: str
    agent_solution: str
    steps: tuple[Step, ...]
    sections: tuple[str, ...]


OVERALL = FocusArea(
    slug="overall-performance",
    name="Overall Performance",
    prefix="OP",
    business_challenge=(
        "Retail banking managers manually review thousands of customer profiles and "
        "transaction histories daily, spending 3+ hours analyzing customer data to identify "
        "appropriate financial product recommendations and cross-selling opportunities."
    ),
    agent_solution=(
        "Autonomous financial product matching workflow that analyzes customer transaction "
        "patterns, account balances, and lifecycle stages to generate personalized product "
        "recommendations with real-time affinity scoring and conversion predictions."
    ),
    steps=(
        Step(
            "Banking Customer Data Initialization",
            "Loading comprehensive customer banking dataset with enhanced validation across "
            "customers and financial product types",
        ),
        Step(
            "Product Matching Performance Assessment",
            "Calculation of financial product recommendation indicators with customer "
            "affinity analysis",
        ),
        Step(
            "Banking Pattern Recognition",
            "Identification of customer financial behavior patterns with transaction "
            "correlation analysis",
        ),
        Step(
            "AI Banking Intelligence Processing",
            "Processing the banking evidence through the selected AI model",
        ),
        Step(
            "Financial Services Report Compilation",
            "Banking performance analysis with evidence-based recommendations and actionable "
            "product matching insights",
        ),
    ),
    sections=(
        "Executive Summary",
        "Product Matching Performance",
        "Customer Behaviour Patterns",
        "Outlook",
    ),
)

OPTIMIZATION = FocusArea(
    slug="optimization-opportunities",
    name="Optimization Opportunities",
    prefix="OPT",
    business_challenge=(
        "Product managers spend 4+ hours daily manually identifying inefficiencies in "
        "customer segmentation, product affinity analysis, and recommendation delivery "
        "across diverse banking customer portfolios."
    ),
    agent_solution=(
        "AI-powered banking optimization analysis that automatically detects customer "
        "targeting gaps, product positioning inefficiencies, and recommendation delivery "
        "improvements with specific implementation strategies for core banking systems."
    ),
    steps=(
        Step(
            "Banking Optimization Data Preparation",
            "Loading customer financial behavior data with validation for product matching "
            "improvement identification",
        ),
        Step(
            "Financial Product Inefficiency Detection",
            "Analysis of customer segmentation and product affinity targeting with "
            "evidence-based inefficiency identification",
        ),
        Step(
            "Banking Correlation Analysis",
            "Relationships between customer lifecycle stages, transaction patterns, and "
            "product acceptance rates",
        ),
        Step(
            "Core Banking System Integration Optimization",
            "Evaluation of recommendation delivery through the core banking pipeline: "
            "backlog, freshness and conversion over time",
        ),
        Step(
            "AI Banking Optimization Intelligence",
            "Financial product targeting recommendations from the selected AI model",
        ),
        Step(
            "Banking Strategy Finalization",
            "Banking optimization report with a prioritized implementation roadmap",
        ),
    ),
    sections=(
        "Executive Summary",
        "Targeting Gaps",
        "Drivers of Acceptance",
        "Delivery Pipeline",
        "Implementation Roadmap",
    ),
)

FINANCIAL = FocusArea(
    slug="financial-impact",
    name="Financial Impact",
    prefix="FIN",
    business_challenge=(
        "Banking financial analysts manually calculate complex ROI metrics across product "
        "lines and customer segments, requiring 3+ hours of financial modeling to assess "
        "product matching impact on revenue and customer lifetime value."
    ),
    agent_solution=(
        "Automated banking financial analysis that calculates comprehensive ROI, identifies "
        "cross-selling revenue opportunities across customer segments, and projects customer "
        "lifetime value benefits with detailed banking portfolio forecasting."
    ),
    steps=(
        Step(
            "Banking Financial Data Integration",
            "Loading customer financial data and banking revenue metrics with validation",
        ),
        Step(
            "Banking Revenue Impact Calculation",
            "Product sales analysis by product line and segment",
        ),
        Step(
            "Customer Lifetime Value Impact Assessment",
            "Revenue at risk from churn, retention metrics and cross-selling potential",
        ),
        Step(
            "Banking Portfolio Efficiency Analysis",
            "Efficiency of revenue across customer segments and product profitability",
        ),
        Step(
            "AI Banking Financial Modeling",
            "Revenue projections and customer value calculations by the selected AI model",
        ),
        Step(
            "Banking Economics Report Generation",
            "Banking financial impact analysis with ROI and customer value forecasting",
        ),
    ),
    sections=(
        "Executive Summary",
        "Revenue Impact",
        "Customer Lifetime Value at Risk",
        "Portfolio Efficiency",
        "Financial Outlook",
    ),
)

STRATEGIC = FocusArea(
    slug="strategic-recommendations",
    name="Strategic Recommendations",
    prefix="STR",
    business_challenge=(
        "Chief Customer Officers spend hours manually analyzing competitive positioning and "
        "developing strategic roadmaps for personalized banking services advancement and "
        "digital transformation initiatives."
    ),
    agent_solution=(
        "Strategic banking intelligence workflow that analyzes competitive advantages against "
        "traditional financial institutions, identifies emerging FinTech integration "
        "opportunities, and creates prioritized digital banking transformation roadmaps."
    ),
    steps=(
        Step(
            "Banking Technology Assessment",
            "Loading the digital banking context across customers and financial products",
        ),
        Step(
            "Financial Services Competitive Advantage Analysis",
            "Effectiveness of AI-powered personalization against a one-size-fits-all offer",
        ),
        Step(
            "Emerging FinTech Integration",
            "Adoption over time and by channel-relevant behaviour, as the base for open "
            "banking and real-time integration",
        ),
        Step(
            "Digital Banking Strategy Development",
            "Prioritized transformation roadmap from adoption by lifecycle stage",
        ),
        Step(
            "AI Banking Strategic Processing",
            "Digital banking recommendations from the selected AI model",
        ),
        Step(
            "Digital Banking Report Generation",
            "Digital banking transformation roadmap ready for CCO executive review",
        ),
    ),
    sections=(
        "Executive Summary",
        "Personalization Advantage",
        "Adoption and Integration",
        "Transformation Roadmap",
    ),
)

FOCUS_AREAS: dict[str, FocusArea] = {
    a.slug: a for a in (OVERALL, OPTIMIZATION, FINANCIAL, STRATEGIC)
}


def get_area(slug: str) -> FocusArea:
    """Return the focus area `slug`, or raise ValueError naming the allowed slugs."""
    try:
        return FOCUS_AREAS[slug]
    except KeyError:
        raise ValueError(
            f"Unknown focus area {slug!r}; choose one of: {', '.join(FOCUS_AREAS)}"
        ) from None
