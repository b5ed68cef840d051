"""The insight engine as the focus areas read it: one scan a run, as evidence and findings.

`run_engine` scans the run's scope (`tools.scans.scan` and `quality`), tests what it read
(`graphs.insights.find`) and returns two Evidence dicts: the insights, a row each (the
strongest MAX_INSIGHTS by impact), and the data problems, a row a check that found any.
`findings` turns rows into Findings whose claim names the entity, the measure and its
numbers in one sentence (a focus area's `Feed`s select which of them it tells).

An insight broken down by the outcome itself (the status, the sale amount or date) is
left out of the areas: a measure's mean by status is the status's share by that
measure read backwards, and the areas tell it that way round. So is one about the
values merged past a column's top ones ("(other)"): no one can act on a remainder.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

from graphs.areas import Feed, FocusArea, Step
from graphs.detectors import money, pct
from graphs.insights import CHURN, Insight, find
from graphs.insights import SALE as SALE_MEASURE
from graphs.report import Finding
from tools.metrics import Filters
from tools.scans import ACCEPTED, OTHER, STATUS, Quality, Scan, coupled, quality, scan
from tools.schema import BY_NAME
from tools.text import quote
from tools.warehouse import Warehouse

INSIGHTS = "insights"
QUALITY = "data_quality"
ENGINE_METRICS = (INSIGHTS, QUALITY)
MAX_INSIGHTS = 300  # rows the evidence keeps, by impact (a run stores them once)
PER_MEASURE = 4  # findings of one kind and measure a step tells
PER_STEP = 12  # engine findings a step tells
_STRENGTH = {"strong": 0, "moderate": 1, "descriptive": 2}
STRONG = 0.5  # standardized gap of a strong insight on a mean
STRONG_SHARE = 0.10  # gap of a strong insight on a share: ten percentage points
OUTCOME = coupled(STATUS)
# Shares where more is worse, by the status's words (any bank's vocabulary has them).
WORSE_STATUS = ("declin", "reject", "refus", "lost", "cancel", "churn")


def run_engine(
    warehouse: Warehouse, filters: Filters | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scan, test and check the scope; return the insights' and the problems' Evidence.

    A warehouse whose data cannot change while it is open (`Warehouse.results`) keeps
    what the engine found in a scope, as it keeps metric results: asked again, the
    engine reads nothing (the evidence says `cached`).
    """
    key = ("insight-engine", (filters or Filters()).model_dump_json())
    if warehouse.results is not None and (kept := warehouse.results.get(key)) is not None:
        insights, checks = ({**copy.deepcopy(e), "cached": True} for e in kept)
        return insights, checks
    found_pair = _run_engine(warehouse, filters)
    if warehouse.results is not None:
        warehouse.results.put(key, copy.deepcopy(found_pair))
    return found_pair


def _run_engine(
    warehouse: Warehouse, filters: Filters | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    started = time.perf_counter()
    scanned = scan(warehouse, filters)
    found = find(scanned)
    scanned_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    problems = quality(warehouse, filters)
    checked_ms = (time.perf_counter() - started) * 1000
    rows = [insight_row(i, scanned) for i in found[:MAX_INSIGHTS]]
    scope = (filters or Filters()).where()[1]
    insights = _evidence(
        INSIGHTS,
        f"Insights: {len(found):,} slices, cells and breaks that depart (q ≤ 0.01) among "
        f"{len(scanned.slices):,} slices of {len(scanned.dimensions)} dimensions on "
        f"{len(scanned.measures)} measures",
        scanned.sql,
        rows,
        scanned_ms,
        scope,
        truncated=len(found) > MAX_INSIGHTS,
    )
    insights["scanned"] = {
        "records": scanned.records,
        "dimensions": len(scanned.dimensions),
        "measures": len(scanned.measures),
        "slices": len(scanned.slices),
        "cells": len(scanned.cells),
        "found": len(found),
    }
    checks = _evidence(
        QUALITY, "Data quality: checks of every record", problems.sql, quality_rows(problems),
        checked_ms, scope,
    )  # fmt: skip
    return insights, checks


def _evidence(
    metric_id: str,
    title: str,
    sql: Sequence[str],
    rows: list[dict[str, Any]],
    elapsed_ms: float,
    parameters: dict[str, Any],
    truncated: bool = False,
) -> dict[str, Any]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {
        "id": None,
        "request": f"{metric_id}:{{}}",
        "metric_id": metric_id,
        "title": title,
        "sql": ";\n".join(s.strip() for s in sql),
        "parameters": parameters,
        "columns": columns,
        "rows": rows,
        "row_count": len(rows),
        "truncated": truncated,
        "elapsed_ms": round(elapsed_ms, 1),
    }


def insight_row(insight: Insight, scanned: Scan) -> dict[str, Any]:
    """One insight as an evidence row; a cell's row also has its two margins' values."""
    dims = {d.name: d for d in scanned.dimensions}
    row: dict[str, Any] = {
        "kind": insight.kind,
        "dimension": insight.dimension,
        "dimension_label": insight.dimension_label,
        "value": insight.value,
        "measure": insight.measure,
        "measure_label": insight.measure_label,
        "unit": insight.unit,
        "n": insight.n,
        "n_rest": insight.n_rest,
        "value_in": insight.value_in,
        "value_rest": insight.value_rest,
        "gap": insight.gap,
        "standardized": insight.standardized,
        "q": insight.q,
        "impact": insight.impact,
        "money": insight.money,
        "columns": sorted(
            {dims[d].column for d in (insight.dimension, insight.second_dimension) if d in dims}
        ),
    }
    if insight.kind == "cell":
        by_slice = {(s.dimension.name, s.value): s for s in scanned.slices}
        first = by_slice[(insight.dimension, insight.value)].stats[insight.measure]
        second = by_slice[(insight.second_dimension, insight.second_value)].stats[insight.measure]
        row |= {
            "second_dimension": insight.second_dimension,
            "second_label": insight.second_label,
            "second_value": insight.second_value,
            "first_margin": first.mean,
            "second_margin": second.mean,
        }
    return row


def quality_rows(problems: Quality) -> list[dict[str, Any]]:
    """A row for each check that found something, with the count and what it weighs."""
    rows: list[dict[str, Any]] = []
    for column, count in problems.out_of_range.items():
        spec = BY_NAME[column]
        rows.append(
            {"check": "out_of_range", "column": column, "records": count,
             "low": spec.low, "high": spec.high, "of": problems.records}
        )  # fmt: skip
    for check in (
        "accepted_without_sale",
        "sale_without_acceptance",
        "sale_before_recommendation",
    ):
        if count := getattr(problems, check):
            rows.append({"check": check, "records": count, "of": problems.records})
    if problems.conflicting_customers:
        rows.append(
            {"check": "conflicting_customers", "records": problems.conflicting_customers,
             "of": problems.customers}
        )  # fmt: skip
    for product, (count, amount) in sorted(problems.outliers_by_type.items()):
        rows.append(
            {"check": "outliers", "product_type": product, "records": count, "amount": amount,
             "sales_total": problems.sales_total,
             "share": amount / problems.sales_total if problems.sales_total else 0.0,
             "without": problems.sales_total - amount}
        )  # fmt: skip
    return rows


def polarity(measure: str, label: str) -> int:
    """+1 where more of the measure is better for the bank, -1 where worse, 0 unknown."""
    if measure == CHURN:
        return -1
    if measure.startswith("share_"):
        status = label.removeprefix("share ").lower()
        if status == ACCEPTED.lower():
            return 1
        return -1 if any(w in status for w in WORSE_STATUS) else 0
    return 1


def measured(value: float, unit: str) -> str:
    """A measure's value as a report writes it."""
    if unit == "share":
        return pct(value)
    if unit == "money":
        return money(value)
    if unit == "count":
        return f"{value:,.1f}"
    return f"{value:.3f}"


def _what(row: dict[str, Any]) -> str:
    """The measure in words; a status (a data value) quoted."""
    if row["measure"].startswith("share_"):
        return f"the share {quote(row['measure_label'].removeprefix('share '))}"
    return str(row["measure_label"])


def _first_up(text: str) -> str:
    """`text` with its first letter upper case (and, unlike `str.capitalize`, the rest kept)."""
    return text[:1].upper() + text[1:]


def _where(dimension_label: str, value: str) -> str:
    return f"{dimension_label} {quote(value)}"


def _about_outcome(row: dict[str, Any]) -> bool:
    return bool(set(row.get("columns") or ()) & OUTCOME)


def findings(evidence: dict[str, Any]) -> list[Finding]:
    """The insights of the engine's evidence as Findings, strongest impact first."""
    out = []
    for row in evidence.get("rows", []):
        if _about_outcome(row) or OTHER in (row["value"], row.get("second_value")):
            continue  # read backwards (see above), or values merged past the top ones
        out.append(_finding(row, evidence["id"]))
    return out


def _finding(row: dict[str, Any], evidence_id: str) -> Finding:
    unit = row["unit"]
    what, gap = _what(row), row["gap"]
    inside, rest = measured(row["value_in"], unit), measured(row["value_rest"], unit)
    labels = {row["dimension"]: row["value"]}
    numbers = {
        k: float(row[k])
        for k in ("value_in", "value_rest", "gap", "n", "n_rest", "q", "impact", "standardized")
    }
    higher = "higher" if gap > 0 else "lower"
    if row["kind"] == "shift":
        month = quote(row["value"])
        title = f"{_first_up(what)} {'rose' if gap > 0 else 'fell'} to {inside} from {month}"
        claim = (
            f"{_first_up(what)} is {inside} from {month} on, against {rest} before "
            f"(n = {row['n']:,} since, {row['n_rest']:,} before)."
        )
    elif row["kind"] == "cell":
        a = _where(row["dimension_label"], row["value"])
        b = _where(row["second_label"], row["second_value"])
        labels[row["second_dimension"]] = row["second_value"]
        first, second = measured(row["first_margin"], unit), measured(row["second_margin"], unit)
        numbers |= {"first_margin": row["first_margin"], "second_margin": row["second_margin"]}
        title = f"{_first_up(what)} is {inside} for {a} with {b}, {higher} than predicted"
        claim = (
            f"{_first_up(what)} is {inside} for {a} with {b} (n = {row['n']:,}), where "
            f"{a} has {first} overall and {b} {second}: {higher} than the two together "
            "predict."
        )
    else:
        entity = _where(row["dimension_label"], row["value"])
        title = f"{_first_up(what)} is {inside} for {entity}, against {rest} for the rest"
        claim = (
            f"{_first_up(what)} is {inside} for {entity} against {rest} for the rest "
            f"(n = {row['n']:,} against {row['n_rest']:,})."
        )
    told = _worth(row) if row.get("money") else ""
    if told:  # what acting is worth; a gap in what groups hold is not told as worth
        numbers["money"] = float(row["money"])
        claim += f" {told}"
    share = unit == "share"
    return Finding(
        id="",
        kind=row["kind"],
        measure=row["measure"],
        title=title,
        claim=claim,
        numbers=numbers,
        evidence_ids=[evidence_id],
        effect_size=round(100 * gap, 1) if share else gap,
        effect_unit="pp" if share else unit,
        sample_size=int(row["n"]),
        strength="strong" if _strong(row) else "moderate",
        labels=labels,
        polarity=polarity(row["measure"], row["measure_label"]),
    )


def _strong(row: dict[str, Any]) -> bool:
    if row["unit"] == "share":
        return abs(row["gap"]) >= STRONG_SHARE
    return abs(row["standardized"]) >= STRONG


def _worth(row: dict[str, Any]) -> str:
    """What acting on the insight is worth, in words ('' where the gap is no action's).

    A gap in balances or transaction values between groups is what they hold, not money
    an action moves: it stays in `numbers` and is not told as worth.
    """
    amount = money(row["money"])
    measure, gap = row["measure"], row["gap"]
    if measure.startswith("share_"):  # only the accepted share carries money
        if gap < 0:
            return (
                f"At the rest's rate it would bring {amount} more in sales, at its own "
                "average sale."
            )
        return f"Its lead is worth {amount} in sales against the rest's rate."
    if measure == CHURN:
        if gap > 0:
            return f"The higher churn puts {amount} of balance at risk."
        return f"Its lower churn keeps {amount} of balance."
    if measure == SALE_MEASURE:
        more = "more" if gap > 0 else "less"
        return f"Its {row['n']:,} sales bring {amount} {more} than at the rest's average sale."
    return ""


def quality_findings(evidence: dict[str, Any]) -> list[Finding]:
    """The data problems of the engine's evidence as Findings, in the checks' order."""
    out = []
    for row in evidence.get("rows", []):
        check, count = row["check"], int(row["records"])
        numbers: dict[str, float] = {"records": count, "of": float(row.get("of") or 0)}
        labels: dict[str, str] = {}
        if check == "out_of_range":
            column = row["column"]
            bounds = [b for b in (row.get("low"), row.get("high")) if b is not None]
            numbers |= {f"bound_{i}": float(b) for i, b in enumerate(bounds)}
            span = f" {' to '.join(f'{b:g}' for b in bounds)}" if bounds else ""
            title = f"Values of {column} out of range"
            claim = (
                f"{count:,} of {row['of']:,} records hold a value of {column} that is not "
                f"finite or outside its range{span}; every mean here leaves them out."
            )
        elif check == "accepted_without_sale":
            title = "Accepted recommendations without a sale"
            claim = (
                f"{count:,} accepted recommendations have no sale recorded: sales totals "
                "understate what was accepted."
            )
        elif check == "sale_without_acceptance":
            title = "Sales without an accepted recommendation"
            claim = f"{count:,} records have a sale but no accepted recommendation."
        elif check == "sale_before_recommendation":
            title = "Sales dated before their recommendation"
            claim = f"{count:,} sales are dated before the recommendation they came from."
        elif check == "conflicting_customers":
            title = "Customers with conflicting profiles"
            claim = (
                f"{count:,} of {row['of']:,} customers have records that disagree on their "
                "segment, name or e-mail address."
            )
        else:  # outliers
            product = quote(row["product_type"])
            labels = {"product_type": str(row["product_type"])}
            numbers |= {k: float(row[k]) for k in ("amount", "sales_total", "share", "without")}
            title = f"Outlying sales of {product}"
            claim = (
                f"{count:,} outlying sales of product type {product} (far above its typical "
                f"sale) hold {money(row['amount'])}, {pct(row['share'])} of the "
                f"{money(row['sales_total'])} of product sales; without them sales are "
                f"{money(row['without'])}."
            )
        out.append(
            Finding(
                id="", kind="quality", measure=check, title=title, claim=claim,
                numbers=numbers, evidence_ids=[evidence["id"]], sample_size=count,
                strength="moderate", labels=labels,
            )
        )  # fmt: skip
    return out


def worth(finding: Finding) -> float:
    """The money acting on a finding would gain or protect: that of a gap against the bank.

    A group ahead of the rest names money too (its lead), but nothing is there to win.
    """
    value = finding.numbers.get("money", 0.0)
    if not math.isfinite(value) or finding.polarity * finding.numbers.get("gap", 0.0) >= 0:
        return 0.0
    return value


def _key(area: FocusArea, f: Finding) -> tuple[float, ...]:
    """Order findings for `area`: its lead feeds first, then by its rank, then strength."""
    lead = next((i for i, feed in enumerate(area.lead) if feed.takes(f)), len(area.lead))
    impact = f.numbers.get("impact", 0.0)
    worse = 0 if f.polarity * f.numbers.get("gap", 0.0) < 0 else 1
    by = {
        "impact": (-impact,),
        "money": (-worth(f), -impact),
        "worst": (worse, -impact),
    }[area.rank]
    return (lead, _STRENGTH[f.strength], *by, -abs(f.effect_size or 0))


def ranked(area: FocusArea, found: list[Finding]) -> list[Finding]:
    """The findings in the order `area` tells them (see `FocusArea.lead` and `rank`)."""
    return sorted(found, key=lambda f: _key(area, f))


def by_feeds(feeds: tuple[Feed, ...], found: list[Finding]) -> list[Finding]:
    """The findings `feeds` take, those of the first feed first (each in `found`'s order)."""
    first = {id(f): next((i for i, feed in enumerate(feeds) if feed.takes(f)), -1) for f in found}
    return sorted((f for f in found if first[id(f)] >= 0), key=lambda f: first[id(f)])


def chosen(area: FocusArea, step: Step, found: list[Finding]) -> list[Finding]:
    """What `step` tells of the engine's findings, in the area's order.

    Those its feeds take: at most PER_MEASURE of one kind and measure, PER_STEP in all.
    """
    counts: dict[tuple[str, str], int] = {}
    out = []
    for f in by_feeds(step.feeds, ranked(area, found)):
        key = (f.kind, f.measure)
        if counts.get(key, 0) >= PER_MEASURE and f.kind != "quality":
            continue
        counts[key] = counts.get(key, 0) + 1
        out.append(f)
        if len(out) == PER_STEP:
            break
    return out
