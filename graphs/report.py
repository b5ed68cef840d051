"""The report contract: Finding, Recommendation, Report, their markdown and grounding.

`Report` is the single source the CLI, API, UI and evals read. Grounding: every number a
narrative states must match a number in the evidence or the findings (within rounding);
numbers that match nothing are listed in `Report.ungrounded`, and the markdown marks them.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.text import escape_markdown

Strength = Literal["strong", "moderate", "descriptive"]
# What produced a finding: the insight engine (a slice against the rest, a cell against
# its margins, a break in a monthly series, a data problem) or a descriptive detector.
FindingKind = Literal[
    "slice",
    "cell",
    "shift",
    "quality",
    "correlation",
    "overview",
    "scope",
    "revenue_top_product_type",
    "revenue_top_segment",
    "value_at_risk",
    "cross_sell_pool",
    "pipeline_backlog",
]


class Finding(BaseModel):
    """A claim a detector computed from evidence, with the numbers behind it."""

    id: str = Field(description="Stable id within the report, e.g. OPT-2")
    kind: FindingKind = Field(description="What produced it: an insight kind or a detector")
    measure: str = Field(
        "", description="What it measures, e.g. share_accepted, or the check of a data problem"
    )
    title: str
    claim: str = Field(description="The claim in one or two sentences, numbers included")
    numbers: dict[str, float] = Field(default_factory=dict, description="Numbers in the claim")
    evidence_ids: list[str] = Field(default_factory=list, description="Evidence it came from")
    effect_size: float | None = Field(None, description="Size of the effect (see effect_unit)")
    effect_unit: str = Field("", description="Unit of effect_size, e.g. 'pp', 'r', 'x'")
    sample_size: int = Field(0, description="Records (or customers) behind the claim")
    strength: Strength = Field("descriptive", description="strong/moderate effect, or a fact")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="The data values the finding is about (segment, product type, stage), "
        "as the table holds them; in the title and claim they appear quoted and escaped",
    )
    polarity: int = Field(
        0, description="+1 where more of the measure is better for the bank, -1 worse, 0 unknown"
    )


class Recommendation(BaseModel):
    """One prioritised action, tied to the findings that justify it."""

    priority: int = Field(description="1 is most urgent")
    action: str
    rationale: str
    finding_ids: list[str] = Field(default_factory=list)


class Section(BaseModel):
    """A titled part of the narrative."""

    title: str
    body: str


class EvidenceRef(BaseModel):
    """An appendix entry: the query behind a set of numbers."""

    id: str
    metric_id: str
    title: str
    sql: str
    parameters: dict[str, Any]
    row_count: int
    truncated: bool


class Analysis(BaseModel):
    """What the AI step writes: narrative sections and recommendations citing findings."""

    headline: str = Field(description="One sentence a manager reads first")
    sections: list[Section] = Field(description="The focus area's sections, in order")
    recommendations: list[Recommendation] = Field(description="Prioritised actions")


class Report(BaseModel):
    """A finished focus-area report."""

    focus_area: str
    title: str
    scope: str
    model: str
    model_label: str = Field(description="Who wrote the narrative, in words")
    generated_at: str
    headline: str
    sections: list[Section]
    findings: list[Finding]
    recommendations: list[Recommendation]
    evidence: list[EvidenceRef]
    numbers_checked: int = Field(0, description="Numbers found in the narrative")
    ungrounded: list[str] = Field(
        default_factory=list, description="Narrative numbers that match no evidence"
    )
    usage: dict[str, int] = Field(
        default_factory=dict,
        description="Model use: model_calls, tool_calls, input_tokens, output_tokens and "
        "prompt_tokens_estimate (the first prompt's size, also for the offline analyst)",
    )
    unknown_finding_ids: list[str] = Field(
        default_factory=list, description="Finding ids cited that do not exist"
    )

    def markdown(self) -> str:
        """Render the report as markdown."""
        out = [f"# {self.title}", "", f"**{self.headline}**", ""]
        scope = escape_markdown(self.scope)  # scope values are the table's
        out.append(f"_Scope: {scope}. Narrative by {self.model_label}. {self.generated_at}._")
        out.append("")
        if self.ungrounded:
            out += [
                "> **Grounding check:** these numbers in the narrative match no evidence: "
                + ", ".join(self.ungrounded)
                + ". Treat them as unverified.",
                "",
            ]
        for section in self.sections:
            out += [f"## {section.title}", "", section.body, ""]
        if self.recommendations:
            out += ["## Recommendations", ""]
            for r in sorted(self.recommendations, key=lambda r: r.priority):
                cites = f" ({', '.join(r.finding_ids)})" if r.finding_ids else ""
                out.append(f"{r.priority}. **{r.action}**{cites} — {r.rationale}")
            out.append("")
        out += ["## Findings", ""]
        for f in self.findings:
            size = ""
            if f.effect_size is not None:
                size = f" Effect {_fmt(f.effect_size)} {f.effect_unit}, n = {f.sample_size:,}."
            out.append(
                f"- **{f.id} {f.title}** [{f.strength}] {f.claim}{size} "
                f"Evidence: {', '.join(f.evidence_ids)}."
            )
        out += ["", "## Evidence", ""]
        for e in self.evidence:
            cut = " (truncated)" if e.truncated else ""
            out += [
                f"**{e.id}** {e.title} — {e.row_count} rows{cut}",
                "",
                "```sql",
                e.sql,
                "```",
                "",
            ]
        return "\n".join(out)


def _fmt(x: float) -> str:
    return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"


_NUMBER = re.compile(r"(?<![\w.])[-−]?\$?\d[\d,]*(?:\.\d+)?(?:\s*(?:%|pp\b)|[kKmMbB]\b|x\b)?")


# A day or a month (2025-07-01, 2025-07): a date, not three numbers to check.
_DATE = re.compile(r"(?<![\w.])(?:19|20|21|99)\d\d-\d\d(?:-\d\d)?(?!\w|\.\d)")


def narrative_numbers(text: str) -> list[str]:
    """Return the numbers a text states, as written (ids like OPT-2, dates, years excluded)."""
    text = _DATE.sub(lambda m: " " * len(m.group(0)), text)
    out = []
    for m in _NUMBER.finditer(text):
        token = m.group(0).strip().rstrip(",")
        start = m.start()
        if re.search(r"[A-Za-z]-$", text[:start]):
            continue  # a finding or evidence id such as OPT-2
        if re.fullmatch(r"(19|20)\d\d", token):
            continue  # a year
        out.append(token)
    return out


def _candidates(token: str) -> list[tuple[float, float]]:
    """Return (value, tolerance) readings of a written number."""
    t = token.replace("$", "").replace(",", "").replace("−", "-").strip().removesuffix("x")
    scale = 1.0
    suffix = t[-2:] if t.endswith("pp") else t[-1:]
    if suffix in ("%", "pp"):
        t = t[: -len(suffix)].strip()
    elif suffix.lower() in ("k", "m", "b"):
        scale = {"k": 1e3, "m": 1e6, "b": 1e9}[suffix.lower()]
        t = t[:-1].strip()
    value = float(t)
    decimals = len(t.split(".")[1]) if "." in t else 0
    tol = 0.5 * 10**-decimals
    readings = [(value * scale, tol * scale)]
    if suffix in ("%", "pp"):
        readings.append((value / 100, tol / 100))
    return readings


def _flatten(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float) and math.isfinite(v):
            out.append(float(v))
    return out


def grounding_pool(evidence: list[dict[str, Any]], findings: list[Finding]) -> list[float]:
    """Return every number the narrative may cite: evidence cells and finding numbers."""
    pool: list[float] = []
    for e in evidence:
        for row in e.get("rows", []):
            pool += _flatten(row.values())
            # Labels are data too: the 0.75 in 'Very high (>=0.75)' is grounded.
            for value in row.values():
                if isinstance(value, str):
                    for token in narrative_numbers(value):
                        pool += [v for v, _ in _candidates(token)]
        pool += _flatten([e.get("row_count", 0)])
    for f in findings:
        pool += _flatten(f.numbers.values())
        pool += _flatten([f.sample_size, f.effect_size or 0.0])
    return pool


def _grounded(ordered: list[float], value: float, tol: float) -> bool:
    """Return whether a sorted pool holds a number within `tol` of `value` (rounding)."""
    slack = tol + 2e-9 * max(1.0, abs(value) + tol)
    i = bisect.bisect_left(ordered, value - slack)
    while i < len(ordered) and ordered[i] <= value + slack:
        p = ordered[i]
        if abs(p - value) <= tol + 1e-9 * max(1.0, abs(p)):
            return True
        i += 1
    return False


def check_grounding(texts: Iterable[str], pool: list[float]) -> tuple[int, list[str]]:
    """Return how many numbers the texts state and those matching nothing in `pool`."""
    ordered = sorted(pool)
    checked, ungrounded = 0, []
    for text in texts:
        for token in narrative_numbers(text):
            checked += 1
            try:
                readings = _candidates(token)
            except ValueError:
                continue
            ok = any(_grounded(ordered, value, tol) for value, tol in readings)
            if not ok and token not in ungrounded:
                ungrounded.append(token)
    return checked, ungrounded
