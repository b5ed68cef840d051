"""The four focus areas: names, business challenge, agent solution, steps and sections.

Texts follow the FinMatch product description; the service and the UI show them, and the
graphs take their node names from `steps`. What each area tells is data here too: which
findings (kinds, measures, dimensions: `Feed`) each data step takes from the insight
engine, which feed each report section, what the area leads with and how it ranks.
Code reads these generically; a fifth area is a spec and a module.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from graphs.report import Finding

Cut = Literal["category", "band", "month"]
Rank = Literal["impact", "money", "worst"]


def cut_of(dimension: str) -> Cut:
    """How a dimension cuts the scope, from its name (see `tools.scans.Dimension`)."""
    if dimension == "month":
        return "month"
    return "band" if dimension.startswith("band_") else "category"


@dataclass(frozen=True)
class Feed:
    """Which findings a step or a section takes.

    `kinds` are finding kinds (`graphs.report.FindingKind`); `measures` globs over the
    finding's measure (`share_*`, `mean_customer_churn_probability`); `cuts` the kinds
    of dimension it may be about (a category's values, a number's bands, months);
    `dimensions` globs over their names (`band_recommendation_score`).
    """

    kinds: tuple[str, ...]
    measures: tuple[str, ...] = ("*",)
    cuts: tuple[Cut, ...] = ("category", "band", "month")
    dimensions: tuple[str, ...] = ("*",)

    def takes(self, finding: Finding) -> bool:
        """Whether the finding is of a kind, measure and dimensions this feed takes."""
        if finding.kind not in self.kinds:
            return False
        if not any(fnmatch.fnmatchcase(finding.measure, m) for m in self.measures):
            return False
        return all(
            cut_of(d) in self.cuts and any(fnmatch.fnmatchcase(d, g) for g in self.dimensions)
            for d in finding.labels
        )


def taken(feeds: tuple[Feed, ...], finding: Finding) -> bool:
    """Whether any of `feeds` takes the finding."""
    return any(feed.takes(finding) for feed in feeds)


@dataclass(frozen=True)
class Step:
    """One documented workflow step (a graph node of the same name).

    `feeds`: the insight-engine findings a data step tells (each is told once, by the
    first step that takes it).
    """

    name: str
    description: str
    feeds: tuple[Feed, ...] = ()


@dataclass(frozen=True)
class Section:
    """A report section: its title, the findings that feed it, and what it says without."""

    title: str
    feeds: tuple[Feed, ...] = ()
    empty: str = "Nothing material in this scope."


@dataclass(frozen=True)
class FocusArea:
    """A focus area and its agent workflow.

    The first section is the executive summary: data problems, the portfolio overview
    and the strongest signals. `lead`: the findings the area leads with, before the
    rest, each group in `rank` order (impact: records x standardized gap; money: what
    acting is worth; worst: the gaps against the bank first, then impact).
    """

    slug: str
    name: str
    prefix: str
    business_challenge: str
    agent_solution: str
    steps: tuple[Step, ...]
    sections: tuple[Section, ...]
    lead: tuple[Feed, ...] = ()
    rank: Rank = "impact"

    @property
    def titles(self) -> tuple[str, ...]:
        """The section titles, in order."""
        return tuple(s.title for s in self.sections)


# Measures by what they say (names from `tools.scans.measures_for`).
STATUS_SHARES = ("share_*",)
ACCEPTANCE = ("share_accepted",)
TARGETING = ("mean_recommendation_score", "mean_customer_product_affinity")
CHURN = ("mean_customer_churn_probability",)
BEHAVIOUR = (
    "mean_customer_churn_probability",
    "mean_customer_satisfaction_score",
    "mean_account_balance",
    "mean_customer_transaction_value",
    "mean_customer_transaction_count",
)
MONEY = ("mean_sale", "mean_account_balance", "mean_customer_transaction_value")
GROUPS = ("slice", "cell")
# The scores the recommendations are personalised by: does acting on them pay?
PERSONALIZED = ("band_recommendation_score", "band_customer_product_affinity")
PERSONALIZATION = (Feed(GROUPS, STATUS_SHARES, ("band",)), Feed(GROUPS, TARGETING))
QUALITY = Feed(("quality",))
SUMMARY = "Executive Summary"
ROADMAP = "See the prioritised recommendations below."


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
            (QUALITY,),
        ),
        Step(
            "Product Matching Performance Assessment",
            "Calculation of financial product recommendation indicators with customer "
            "affinity analysis",
            (Feed(GROUPS, STATUS_SHARES + TARGETING),),
        ),
        Step(
            "Banking Pattern Recognition",
            "Identification of customer financial behavior patterns with transaction "
            "correlation analysis",
            (
                Feed(GROUPS, BEHAVIOUR, ("category",)),
                Feed(("shift",)),
                Feed(GROUPS, BEHAVIOUR, ("band",)),
            ),
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
        Section(SUMMARY),
        Section("Product Matching Performance", (Feed(GROUPS, STATUS_SHARES + TARGETING),)),
        Section(
            "Customer Behaviour Patterns",
            (
                Feed(GROUPS, BEHAVIOUR, ("category",)),
                Feed(("correlation",)),
                Feed(GROUPS, BEHAVIOUR, ("band",)),
            ),
        ),
        Section("Outlook", (Feed(("shift",)), Feed(("pipeline_backlog", "cross_sell_pool")))),
    ),
    lead=(Feed(GROUPS, ACCEPTANCE),),
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
            (QUALITY,),
        ),
        Step(
            "Financial Product Inefficiency Detection",
            "Analysis of customer segmentation and product affinity targeting with "
            "evidence-based inefficiency identification",
            (Feed(GROUPS, STATUS_SHARES + TARGETING, ("category",)),),
        ),
        Step(
            "Banking Correlation Analysis",
            "Relationships between customer lifecycle stages, transaction patterns, and "
            "product acceptance rates",
            (
                Feed(GROUPS, STATUS_SHARES + TARGETING, ("band",)),
                Feed(GROUPS, BEHAVIOUR, ("category",)),
            ),
        ),
        Step(
            "Core Banking System Integration Optimization",
            "Evaluation of recommendation delivery through the core banking pipeline: "
            "backlog, freshness and conversion over time",
            (Feed(("shift",)),),
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
        Section(SUMMARY),
        Section(
            "Targeting Gaps",
            (
                Feed(GROUPS, STATUS_SHARES + TARGETING, ("category",)),
                Feed(("cross_sell_pool",)),
            ),
        ),
        Section(
            "Drivers of Acceptance",
            (
                Feed(GROUPS, STATUS_SHARES + TARGETING, ("band",)),
                Feed(GROUPS, BEHAVIOUR, ("category",)),
                Feed(("correlation",)),
            ),
        ),
        Section("Delivery Pipeline", (Feed(("shift",)), Feed(("pipeline_backlog",)))),
        Section("Implementation Roadmap", empty=ROADMAP),
    ),
    lead=(Feed(GROUPS, ACCEPTANCE, ("category",)), Feed(GROUPS, STATUS_SHARES)),
    rank="worst",
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
            (QUALITY,),
        ),
        Step(
            "Banking Revenue Impact Calculation",
            "Product sales analysis by product line and segment",
            (Feed(GROUPS, ("mean_sale", *ACCEPTANCE)),),
        ),
        Step(
            "Customer Lifetime Value Impact Assessment",
            "Revenue at risk from churn, retention metrics and cross-selling potential",
            (Feed((*GROUPS, "shift"), CHURN, ("category", "month")), Feed(GROUPS, CHURN)),
        ),
        Step(
            "Banking Portfolio Efficiency Analysis",
            "Efficiency of revenue across customer segments and product profitability",
            (
                Feed(GROUPS, MONEY, ("category",)),
                Feed(("shift",), (*MONEY, *ACCEPTANCE)),
                Feed(GROUPS, MONEY),
            ),
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
        Section(SUMMARY),
        Section(
            "Revenue Impact",
            (
                Feed(("revenue_top_product_type", "revenue_top_segment")),
                Feed(GROUPS, ("mean_sale", *ACCEPTANCE)),
            ),
        ),
        Section(
            "Customer Lifetime Value at Risk",
            (
                Feed(("value_at_risk",)),
                Feed((*GROUPS, "shift"), CHURN, ("category", "month")),
                Feed(("correlation",)),
                Feed(GROUPS, CHURN),
            ),
        ),
        Section(
            "Portfolio Efficiency",
            (Feed(GROUPS, MONEY, ("category",)), Feed(("cross_sell_pool",)), Feed(GROUPS, MONEY)),
        ),
        Section("Financial Outlook", (Feed(("shift",), (*MONEY, *ACCEPTANCE)),)),
    ),
    lead=(Feed((*GROUPS, "shift"), (*MONEY, *ACCEPTANCE, *CHURN)),),
    rank="money",
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
            (QUALITY,),
        ),
        Step(
            "Financial Services Competitive Advantage Analysis",
            "Effectiveness of AI-powered personalization against a one-size-fits-all offer",
            (Feed(GROUPS, STATUS_SHARES, dimensions=PERSONALIZED), *PERSONALIZATION),
        ),
        Step(
            "Emerging FinTech Integration",
            "Adoption over time and by channel-relevant behaviour, as the base for open "
            "banking and real-time integration",
            (Feed(("shift",)), Feed(GROUPS, STATUS_SHARES, ("category",))),
        ),
        Step(
            "Digital Banking Strategy Development",
            "Prioritized transformation roadmap from adoption by lifecycle stage",
            (Feed(GROUPS, BEHAVIOUR, ("category",)), Feed(GROUPS, BEHAVIOUR)),
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
        Section(SUMMARY),
        Section(
            "Personalization Advantage",
            (Feed(GROUPS, STATUS_SHARES, dimensions=PERSONALIZED), *PERSONALIZATION),
        ),
        Section(
            "Adoption and Integration",
            (Feed(("shift",)), Feed(GROUPS, STATUS_SHARES, ("category",))),
        ),
        Section(
            "Transformation Roadmap",
            (Feed(GROUPS, BEHAVIOUR, ("category",)), Feed(GROUPS, BEHAVIOUR)),
            empty=ROADMAP,
        ),
    ),
    lead=(Feed(GROUPS, ACCEPTANCE, dimensions=PERSONALIZED), Feed(("shift",))),
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
