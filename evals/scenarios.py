"""Ground-truth scenarios: generated tables with known relationships, and what to find.

Each scenario is a table the generator builds from a seed with chosen `Relationships`, so
what is true in it is known before any analyst looks. For every focus area it lists the
findings a good analyst must report (the relationships planted that the area is about)
and the material findings it may report; any other material finding is invented. A
finding is named by its detector kind (`graphs.detectors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphs.areas import FOCUS_AREAS
from tools.generator import Relationships

OVERALL = "overall-performance"
OPTIMIZATION = "optimization-opportunities"
FINANCIAL = "financial-impact"
STRATEGIC = "strategic-recommendations"

CHURN_SATISFACTION = "correlation:customer_churn_probability:customer_satisfaction_score"
AFFINITY_SCORE = "correlation:customer_product_affinity:recommendation_score"
COUNT_VALUE = "correlation:customer_transaction_count:customer_transaction_value"
CHURN_COUNT = "correlation:customer_churn_probability:customer_transaction_count"

# What each planted relationship shows up as, and in which areas' reports it belongs.
_SHOWS: dict[str, dict[str, tuple[str, ...]]] = {
    "affinity_acceptance": {"affinity_acceptance": (OVERALL, OPTIMIZATION, STRATEGIC)},
    "score_tracks_affinity": {
        "score_acceptance": (OVERALL, STRATEGIC),
        AFFINITY_SCORE: (OVERALL, OPTIMIZATION),
    },
    "stage_effects": {
        "stage_acceptance": (OVERALL, OPTIMIZATION, STRATEGIC),
        "churn_stage": (OVERALL, FINANCIAL, STRATEGIC),
    },
    "satisfaction_churn": {CHURN_SATISFACTION: (OVERALL, OPTIMIZATION, FINANCIAL)},
    "segment_balance": {"segment_balance": (OVERALL, FINANCIAL)},
    "lagging_cell": {"lagging_cell": (OVERALL, OPTIMIZATION, FINANCIAL, STRATEGIC)},
    "value_tracks_activity": {COUNT_VALUE: (OVERALL,)},
}
# True but second-order consequences of what is planted: reporting them is not invention.
_FOLLOWS: dict[str, tuple[str, ...]] = {
    # Inactive customers both churn more and transact rarely (stage effects).
    "stage_effects": (CHURN_COUNT,),
}


@dataclass(frozen=True)
class Scenario:
    """A generated table and, per focus area, what must and may be found in it."""

    name: str
    description: str
    rows: int
    seed: int
    relationships: Relationships
    question: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    must: dict[str, frozenset[str]] = field(default_factory=dict)
    may: dict[str, frozenset[str]] = field(default_factory=dict)

    def expectations(self, focus: str) -> dict[str, list[str]]:
        """Return what a run of `focus` on this scenario is scored against."""
        area = FOCUS_AREAS[focus]
        return {
            "steps": [s.name for s in area.steps],
            "sections": list(area.sections),
            "must_find": sorted(self.must.get(focus, frozenset())),
            "may_find": sorted(self.may.get(focus, frozenset())),
        }


def _planted(rel: Relationships) -> set[str]:
    """Return the names of the relationships `rel` plants."""
    names = {
        name
        for name in (
            "affinity_acceptance",
            "score_tracks_affinity",
            "stage_effects",
            "satisfaction_churn",
            "segment_balance",
            "value_tracks_activity",
        )
        if getattr(rel, name) > 0
    }
    if rel.lagging_cell:
        names.add("lagging_cell")
    return names


def scenario(
    name: str,
    description: str,
    rows: int,
    seed: int,
    rel: Relationships,
    question: str = "",
    filters: dict[str, str] | None = None,
    out_of_scope: tuple[str, ...] = (),
) -> Scenario:
    """Build a scenario whose expectations follow from the relationships it plants.

    `filters` scope the runs (Context fields such as `segment`); `out_of_scope` names the
    finding kinds that scope cannot show (a segment effect within one segment), which
    are then neither required nor allowed.
    """
    must: dict[str, set[str]] = {slug: set() for slug in FOCUS_AREAS}
    may: dict[str, set[str]] = {slug: set() for slug in FOCUS_AREAS}
    for planted in _planted(rel):
        for kind, areas in _SHOWS[planted].items():
            for slug in areas:
                must[slug].add(kind)
            for slug in FOCUS_AREAS:
                may[slug].add(kind)  # true wherever it is reported
        for kind in _FOLLOWS.get(planted, ()):
            for slug in FOCUS_AREAS:
                may[slug].add(kind)
    gone = set(out_of_scope)
    return Scenario(
        name=name,
        description=description,
        rows=rows,
        seed=seed,
        relationships=rel,
        question=question,
        filters=dict(filters or {}),
        must={k: frozenset(v - gone) for k, v in must.items()},
        may={k: frozenset(v - gone) for k, v in may.items()},
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        scenario(
            "planted",
            "every documented relationship planted at its documented strength",
            20_000,
            7,
            Relationships(),
            question="Where are we losing conversions, and what is it worth?",
        ),
        scenario(
            "none",
            "no column drives another: every material finding is invented",
            20_000,
            7,
            Relationships.none(),
        ),
        scenario(
            "planted-retail",
            "the planted table scoped to Retail customers: the Small Business cell and the "
            "segment effect on balances cannot show within one segment",
            20_000,
            7,
            Relationships(),
            question="How do we convert more Retail customers?",
            filters={"segment": "Retail"},
            out_of_scope=("lagging_cell", "segment_balance"),
        ),
        scenario(
            "no-lagging-cell",
            "the relationships without the lagging Small Business x Personal Loan cell",
            20_000,
            11,
            Relationships(lagging_cell=None),
        ),
    )
}
