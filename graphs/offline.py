"""The offline analyst: the narrative and actions written from findings with fixed rules.

No model is called. It reads only what the findings carry (kind, measure, labels,
polarity, numbers) and what the focus area's spec says (`FocusArea.sections`, `lead`,
`rank`): which findings each section lists and in what order. An action follows from
a finding's kind and whether its gap is for or against the bank, never from its text.
"""

from __future__ import annotations

from graphs.areas import FocusArea, cut_of
from graphs.engine import by_feeds, ranked
from graphs.report import Analysis, Finding, Recommendation, Section
from tools.text import quote

QUESTION_SHOWN = 300  # characters of the question a report repeats
SECTION_FINDINGS = 6  # bullets a section lists before it says how many more there are
SIGNALS = 3  # the strongest findings the executive summary names


def _ordered(findings: list[Finding], area: FocusArea) -> list[Finding]:
    return ranked(area, findings)


def _words(dimension: str) -> str:
    """A dimension's name as words: 'band_customer_product_affinity' -> 'product affinity'."""
    return dimension.removeprefix("band_").removeprefix("customer_").replace("_", " ")


def _entity(f: Finding) -> str:
    """The records a finding is about, in words (values quoted as the claims quote them)."""
    return " with ".join(f"{_words(d)} {quote(v)}" for d, v in f.labels.items())


def _action(f: Finding) -> str | None:
    """The action the offline analyst recommends for a finding, from its kind and sign."""
    if f.kind in ("slice", "cell", "shift"):
        return _group_action(f)
    if f.kind == "quality":
        return f"Correct the data before acting on its totals: {f.title.lower()}"
    return {
        "correlation": "Act on the driver behind this relationship and track it monthly",
        "cross_sell_pool": "Follow up the warm, unconverted high-affinity leads",
        "value_at_risk": "Protect the churn-weighted value at risk with proactive service",
        "pipeline_backlog": "Clear the backlog of pending and in-progress recommendations",
        "scope": "Widen the scope: leave out the filter that leaves the most records",
    }.get(f.kind)


def _group_action(f: Finding) -> str | None:
    """What to do about a group or a break: only for measures an action moves."""
    measure = MEASURE_WORDS.get(f.measure)
    if f.measure.startswith("share_") and f.polarity:
        measure = measure or f"the share {quote(f.measure.removeprefix('share_'))}"
    if measure is None or not f.polarity:
        return None  # what a group holds (balances, activity) is no lever by itself
    direction = f.polarity * f.numbers.get("gap", 0.0)
    if f.kind == "shift":
        month = quote(next(iter(f.labels.values()), ""))
        if direction < 0:
            return f"Find what changed in {measure} from {month} and reverse it"
        return f"Find what lifted {measure} from {month} and keep it"
    where = _entity(f)
    if len(f.labels) == 1 and cut_of(next(iter(f.labels))) == "band":
        dimension, value = next(iter(f.labels.items()))
        if direction > 0:
            return f"Target by {_words(dimension)}: {measure} is better at {quote(value)}"
        return f"Rethink the offer at {_words(dimension)} {quote(value)}, where {measure} lags"
    if direction < 0:
        return f"Close the gap in {measure} for {where}"
    return f"Carry what works for {where}, where {measure} is better, to the rest"


# A measure as an action names it (a status share's words are the table's, so quoted).
MEASURE_WORDS = {
    "share_accepted": "acceptance",
    "mean_customer_churn_probability": "churn",
    "mean_customer_satisfaction_score": "satisfaction",
    "mean_sale": "the average sale",
}


def offline_analysis(area: FocusArea, findings: list[Finding], question: str) -> Analysis:
    """Write the narrative and recommendations from the findings and the area's spec."""
    ordered = _ordered(findings, area)
    problems = [f for f in findings if f.kind == "quality"]
    relationships = [f for f in ordered if f.strength != "descriptive" and f.kind != "quality"]
    overview = next((f for f in findings if f.kind == "overview"), None)
    scope = next((f for f in findings if f.kind == "scope"), None)
    if scope is not None:  # nothing, or too little, to analyse: say so and what to widen
        headline = f"{scope.title} [{scope.id}]."
    elif relationships:
        headline = f"{relationships[0].title} [{relationships[0].id}]."
    else:
        headline = "No relationship in this scope is material; the figures below are descriptive."
    summary = []
    if scope is not None:
        summary.append(f"{scope.claim} [{scope.id}]")
    if problems:  # before any total is stated
        summary.append("Data quality: " + " ".join(f"{f.claim} [{f.id}]" for f in problems))
    if overview:
        summary.append(f"{overview.claim} [{overview.id}]")
    if scope is not None:  # the scope finding says already why nothing is claimed
        pass
    elif relationships:
        summary.append(
            "The strongest signals: "
            + " ".join(f"{f.claim} [{f.id}]" for f in relationships[:SIGNALS])
        )
    else:
        summary.append(
            "No relationship in the data passed the materiality and sample-size "
            "thresholds, so none is claimed."
        )
    if question:  # the asker's words, shown as such: they cannot add headings or links
        summary.append(f"Question asked: {quote(question, QUESTION_SHOWN)}")
    sections = [Section(title=area.sections[0].title, body="\n\n".join(summary))]
    for spec in area.sections[1:]:
        picked = by_feeds(spec.feeds, ordered)
        if picked:
            lines = [f"- {f.claim} [{f.id}]" for f in picked[:SECTION_FINDINGS]]
            if len(picked) > SECTION_FINDINGS:
                lines.append("- More are listed under Findings below.")
            body = "\n".join(lines)
        else:
            body = spec.empty
        sections.append(Section(title=spec.title, body=body))
    recs: list[Recommendation] = []
    for f in [*problems, *ordered]:
        action = _action(f)
        if action and all(r.action != action for r in recs):
            recs.append(
                Recommendation(
                    priority=len(recs) + 1, action=action, rationale=f.claim, finding_ids=[f.id]
                )
            )
        if len(recs) == 5:
            break
    return Analysis(headline=headline, sections=sections, recommendations=recs)
