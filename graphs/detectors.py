"""Deterministic detectors: turn Evidence rows into Findings.

A relationship is called out only when it is material (the effect passes a size
threshold) and supported (each group has at least `MIN_GROUP` records and, for rates, a
two-proportion z of at least `MIN_Z`). Descriptive findings state facts (totals, shares)
and say so. Every number in a claim is in the finding's `numbers`, taken from the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from graphs.report import Finding
from tools.text import quote

MIN_GROUP = 30
MIN_Z = 3.0
MIN_RATE_GAP = 0.10
MIN_CORRELATION = 0.3
MIN_BALANCE_RATIO = 2.0
MIN_CHURN_GAP = 0.10

Ev = dict[str, Any]
# The fields each kind of detector compares; rows missing any are left out.
RATE = ("records", "accepted", "acceptance_rate")
OVERVIEW = (
    "records",
    "acceptance_rate",
    "total_product_sales",
    "avg_satisfaction_score",
    "avg_churn_probability",
)
AT_RISK = (
    "customers",
    "balance_at_risk",
    "total_balance",
    "sales_at_risk",
    "high_risk_customers",
)
POOL = ("records", "pending", "in_progress", "declined", "potential_sales")
BANDS = ("Low (<0.25)", "Moderate (0.25-0.50)", "High (0.50-0.75)", "Very high (>=0.75)")


LABELS = {
    "account_balance": "account balance",
    "customer_transaction_value": "transaction value",
    "customer_transaction_count": "transaction count",
    "product_sales_amount": "product sales",
    "recommendation_score": "recommendation score",
    "customer_product_affinity": "product affinity",
    "customer_satisfaction_score": "satisfaction",
    "customer_churn_probability": "churn probability",
    "last_updated_epoch": "last update time",
}


def pct(x: float) -> str:
    """Format a share as a percentage with one decimal."""
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    """Format a difference of shares in percentage points."""
    return f"{100 * x:.1f} pp"


def money(x: float) -> str:
    """Format an amount of money."""
    return f"${x:,.0f}"


def z_two_proportions(k1: float, n1: float, k2: float, n2: float) -> float:
    """Return the z statistic of the difference of two proportions (0 when undefined)."""
    if min(n1, n2) <= 0:
        return 0.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else (k1 / n1 - k2 / n2) / se


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rows(ev: Ev, breakdown: str | None = None, need: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of `breakdown` (all rows when None) whose `need` fields all hold numbers.

    An aggregate over no rows, or over values that are all missing or not finite, comes
    back as NULL (None): such a row says nothing a detector can compare, so it is left out.
    """
    wanted = tuple(need)
    return [
        r
        for r in ev.get("rows", [])
        if (breakdown is None or r.get("breakdown") == breakdown)
        and all(_number(r.get(f)) for f in wanted)
    ]


def _strength(effect: float, strong: float) -> str:
    return "strong" if abs(effect) >= strong else "moderate"


def band_acceptance(ev: Ev, breakdown: str, label: str, kind: str) -> list[Finding]:
    """Acceptance in the top band of `breakdown` against the bottom band."""
    rows = {r[breakdown]: r for r in _rows(ev, breakdown, RATE)}
    present = [b for b in BANDS if b in rows and rows[b]["records"] >= MIN_GROUP]
    if len(present) < 2:
        return []
    lo, hi = rows[present[0]], rows[present[-1]]
    gap = hi["acceptance_rate"] - lo["acceptance_rate"]
    z = z_two_proportions(hi["accepted"], hi["records"], lo["accepted"], lo["records"])
    if abs(gap) < MIN_RATE_GAP or abs(z) < MIN_Z:
        return []
    direction = "rises" if gap > 0 else "falls"
    return [
        Finding(
            id="",
            kind=kind,
            title=f"Acceptance {direction} with {label}",
            claim=(
                f"{pct(hi['acceptance_rate'])} of recommendations with {label} "
                f"{present[-1]} are accepted against {pct(lo['acceptance_rate'])} at "
                f"{present[0]}, a gap of {pp(gap)}."
            ),
            numbers={
                "rate_high": hi["acceptance_rate"],
                "rate_low": lo["acceptance_rate"],
                "gap": gap,
                "records_high": hi["records"],
                "records_low": lo["records"],
            },
            evidence_ids=[ev["id"]],
            effect_size=round(100 * gap, 1),
            effect_unit="pp",
            sample_size=int(hi["records"] + lo["records"]),
            strength=_strength(gap, 0.2),
        )
    ]


def lagging_cells(ev: Ev, limit: int = 3) -> list[Finding]:
    """Segment x product cells whose acceptance lags the rest of the portfolio."""
    totals = _rows(ev, "segment", (*RATE, "avg_affinity"))
    n_all = sum(r["records"] for r in totals)
    k_all = sum(r["accepted"] for r in totals)
    if not n_all:
        return []
    affinity_all = sum(r["avg_affinity"] * r["records"] for r in totals) / n_all
    found = []
    for r in _rows(ev, "segment_product", (*RATE, "avg_affinity")):
        n, k = r["records"], r["accepted"]
        n_rest, k_rest = n_all - n, k_all - k
        if n < MIN_GROUP or n_rest < MIN_GROUP:
            continue
        rest_rate = k_rest / n_rest
        gap = rest_rate - r["acceptance_rate"]
        z = z_two_proportions(k_rest, n_rest, k, n)
        # A cell that lags only because its customers like the product less is a
        # targeting question, not an inefficiency of the offer: require similar affinity.
        if gap >= MIN_RATE_GAP and z >= MIN_Z and r["avg_affinity"] >= affinity_all - 0.05:
            found.append((z, r, rest_rate, gap))
    found.sort(key=lambda t: -t[0])
    return [
        Finding(
            id="",
            kind="lagging_cell",
            title=(
                f"{quote(r['segment'])} customers offered {quote(r['product_type'])} rarely accept"
            ),
            claim=(
                f"Only {pct(r['acceptance_rate'])} of {r['records']:,} {quote(r['product_type'])} "
                f"recommendations to {quote(r['segment'])} customers are accepted, against "
                f"{pct(rest_rate)} across all other recommendations ({pp(gap)} lower), although "
                f"their average affinity ({r['avg_affinity']:.2f}) is in line with the "
                f"portfolio ({affinity_all:.2f})."
            ),
            numbers={
                "rate": r["acceptance_rate"],
                "rest_rate": rest_rate,
                "gap": gap,
                "records": r["records"],
                "avg_affinity": round(r["avg_affinity"], 2),
                "portfolio_affinity": round(affinity_all, 2),
            },
            evidence_ids=[ev["id"]],
            effect_size=round(100 * gap, 1),
            effect_unit="pp",
            sample_size=int(r["records"]),
            strength=_strength(gap, 0.15),
            labels={"segment": str(r["segment"]), "product_type": str(r["product_type"])},
        )
        for z, r, rest_rate, gap in found[:limit]
    ]


def group_acceptance(ev: Ev, breakdown: str, label: str, kind: str) -> list[Finding]:
    """Best against worst group of `breakdown` (e.g. lifecycle stage) by acceptance."""
    rows = [r for r in _rows(ev, breakdown, RATE) if r["records"] >= MIN_GROUP]
    if len(rows) < 2:
        return []
    best = max(rows, key=lambda r: r["acceptance_rate"])
    worst = min(rows, key=lambda r: r["acceptance_rate"])
    gap = best["acceptance_rate"] - worst["acceptance_rate"]
    z = z_two_proportions(best["accepted"], best["records"], worst["accepted"], worst["records"])
    if gap < MIN_RATE_GAP or z < MIN_Z:
        return []
    return [
        Finding(
            id="",
            kind=kind,
            title=f"Acceptance differs by {label}",
            claim=(
                f"{quote(best[breakdown])} customers accept {pct(best['acceptance_rate'])} of "
                f"recommendations, {quote(worst[breakdown])} customers "
                f"{pct(worst['acceptance_rate'])} ({pp(gap)} apart)."
            ),
            numbers={
                "rate_best": best["acceptance_rate"],
                "rate_worst": worst["acceptance_rate"],
                "gap": gap,
                "records_best": best["records"],
                "records_worst": worst["records"],
            },
            evidence_ids=[ev["id"]],
            effect_size=round(100 * gap, 1),
            effect_unit="pp",
            sample_size=int(best["records"] + worst["records"]),
            strength=_strength(gap, 0.2),
            labels={"best": str(best[breakdown]), "worst": str(worst[breakdown])},
        )
    ]


def correlations(ev: Ev, limit: int = 4, exclude: Iterable[frozenset[str]] = ()) -> list[Finding]:
    """Pairs of numeric columns that move together (|r| above the threshold)."""
    skip = set(exclude)
    out = []
    for r in _rows(ev, need=("r", "n")):
        value, n = r["r"], r["n"]
        if n < 100 or abs(value) < MIN_CORRELATION:
            continue
        if frozenset((r["column_a"], r["column_b"])) in skip:
            continue
        a, b = r["column_a"], r["column_b"]
        la, lb = LABELS.get(a, a), LABELS.get(b, b)
        direction = "rises" if value > 0 else "falls"
        out.append(
            Finding(
                id="",
                kind=f"correlation:{min(a, b)}:{max(a, b)}",
                title=f"{lb.capitalize()} {direction} with {la}",
                claim=(
                    f"{lb.capitalize()} {direction} as {la} rises (r = {value:.2f} over "
                    f"{n:,} records)."
                ),
                numbers={"r": round(value, 2), "n": n},
                evidence_ids=[ev["id"]],
                effect_size=round(value, 2),
                effect_unit="r",
                sample_size=int(n),
                strength=_strength(value, 0.5),
            )
        )
        if len(out) == limit:
            break
    return out


def segment_balances(ev: Ev) -> list[Finding]:
    """Spread of customers' median balances across segments (value_at_risk evidence)."""
    rows = [
        r
        for r in _rows(ev, "segment", ("customers", "median_account_balance"))
        if r["customers"] >= MIN_GROUP and r["median_account_balance"] > 0
    ]
    if len(rows) < 2:
        return []
    hi = max(rows, key=lambda r: r["median_account_balance"])
    lo = min(rows, key=lambda r: r["median_account_balance"])
    ratio = hi["median_account_balance"] / lo["median_account_balance"]
    if ratio < MIN_BALANCE_RATIO:
        return []
    return [
        Finding(
            id="",
            kind="segment_balance",
            title="Balances depend strongly on segment",
            claim=(
                f"The median balance is {money(hi['median_account_balance'])} for "
                f"{quote(hi['customer_segment'])} customers and "
                f"{money(lo['median_account_balance'])} for {quote(lo['customer_segment'])} "
                f"customers, {ratio:.1f}x apart."
            ),
            numbers={
                "median_high": hi["median_account_balance"],
                "median_low": lo["median_account_balance"],
                "ratio": round(ratio, 1),
            },
            evidence_ids=[ev["id"]],
            effect_size=round(ratio, 1),
            effect_unit="x",
            sample_size=int(hi["customers"] + lo["customers"]),
            strength=_strength(ratio, 5.0),
            labels={"high": str(hi["customer_segment"]), "low": str(lo["customer_segment"])},
        )
    ]


def churn_by_stage(ev: Ev) -> list[Finding]:
    """Lifecycle stage whose churn probability stands out from the portfolio."""
    total = next(iter(_rows(ev, "total", ("avg_churn_probability",))), None)
    stages = [
        r
        for r in _rows(
            ev, "lifecycle_stage", ("customers", "avg_churn_probability", "balance_at_risk")
        )
        if r["customers"] >= MIN_GROUP
    ]
    if not total or not stages:
        return []
    worst = max(stages, key=lambda r: r["avg_churn_probability"])
    gap = worst["avg_churn_probability"] - total["avg_churn_probability"]
    if gap < MIN_CHURN_GAP:
        return []
    return [
        Finding(
            id="",
            kind="churn_stage",
            title=f"{quote(worst['customer_lifecycle_stage'])} customers are the churn risk",
            claim=(
                f"{quote(worst['customer_lifecycle_stage'])} customers average a churn probability "
                f"of {pct(worst['avg_churn_probability'])} against "
                f"{pct(total['avg_churn_probability'])} for all customers; they hold "
                f"{money(worst['balance_at_risk'])} of churn-weighted balance."
            ),
            numbers={
                "churn_stage": worst["avg_churn_probability"],
                "churn_all": total["avg_churn_probability"],
                "balance_at_risk": worst["balance_at_risk"],
                "customers": worst["customers"],
            },
            evidence_ids=[ev["id"]],
            effect_size=round(100 * gap, 1),
            effect_unit="pp",
            sample_size=int(worst["customers"]),
            strength=_strength(gap, 0.2),
            labels={"lifecycle_stage": str(worst["customer_lifecycle_stage"])},
        )
    ]


def portfolio_overview(ev: Ev) -> list[Finding]:
    """The KPIs as one descriptive finding."""
    rows = _rows(ev, need=OVERVIEW)
    if not rows or not rows[0]["records"]:
        return []
    k = rows[0]
    return [
        Finding(
            id="",
            kind="overview",
            title="Portfolio at a glance",
            claim=(
                f"{k['records']:,} recommendations: {pct(k['acceptance_rate'])} accepted, "
                f"{money(k['total_product_sales'])} in product sales, average satisfaction "
                f"{k['avg_satisfaction_score']:.2f} and churn probability "
                f"{k['avg_churn_probability']:.2f}."
            ),
            numbers={
                "records": k["records"],
                "acceptance_rate": k["acceptance_rate"],
                "total_product_sales": k["total_product_sales"],
                "avg_satisfaction_score": round(k["avg_satisfaction_score"], 2),
                "avg_churn_probability": round(k["avg_churn_probability"], 2),
            },
            evidence_ids=[ev["id"]],
            sample_size=int(k["records"]),
        )
    ]


def revenue_concentration(ev: Ev) -> list[Finding]:
    """Which product type and segment bring most of the sales."""
    out = []
    for breakdown, key, label in (
        ("product_type", "product_type", "product type"),
        ("segment", "customer_segment", "segment"),
    ):
        rows = [
            r
            for r in _rows(ev, breakdown, ("total_sales", "share_of_sales", "accepted", "records"))
            if r["total_sales"] > 0
        ]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["total_sales"])
        out.append(
            Finding(
                id="",
                kind=f"revenue_top_{breakdown}",
                title=f"Sales concentrate in {quote(top[key])}",
                claim=(
                    f"{quote(top[key])} is the largest {label} by sales: "
                    f"{money(top['total_sales'])}, "
                    f"{pct(top['share_of_sales'])} of all product sales, from "
                    f"{top['accepted']:,} accepted recommendations."
                ),
                numbers={
                    "total_sales": top["total_sales"],
                    "share": top["share_of_sales"],
                    "accepted": top["accepted"],
                },
                evidence_ids=[ev["id"]],
                sample_size=int(top["records"]),
                labels={breakdown: str(top[key])},
            )
        )
    return out


def value_at_risk(ev: Ev) -> list[Finding]:
    """Churn-weighted balance and sales at risk, overall and in the largest segment."""
    total = next(iter(_rows(ev, "total", AT_RISK)), None)
    segments = _rows(ev, "segment", ("balance_at_risk",))
    if not total or not total["customers"]:
        return []
    top = max(segments, key=lambda r: r["balance_at_risk"]) if segments else None
    share = total["balance_at_risk"] / total["total_balance"] if total["total_balance"] else 0.0
    claim = (
        f"Weighted by churn probability, {money(total['balance_at_risk'])} of balances "
        f"({pct(share)} of {money(total['total_balance'])}) and {money(total['sales_at_risk'])} "
        f"of product sales are at risk; {total['high_risk_customers']:,} of "
        f"{total['customers']:,} customers are at high risk."
    )
    numbers = {
        "balance_at_risk": total["balance_at_risk"],
        "share": share,
        "total_balance": total["total_balance"],
        "sales_at_risk": total["sales_at_risk"],
        "high_risk_customers": total["high_risk_customers"],
        "customers": total["customers"],
    }
    if top:
        claim += (
            f" {quote(top['customer_segment'])} holds the most: {money(top['balance_at_risk'])}."
        )
        numbers["segment_balance_at_risk"] = top["balance_at_risk"]
    return [
        Finding(
            id="",
            kind="value_at_risk",
            title="Customer value at risk from churn",
            claim=claim,
            numbers=numbers,
            evidence_ids=[ev["id"]],
            sample_size=int(total["customers"]),
        )
    ]


def unconverted(ev: Ev) -> list[Finding]:
    """High-affinity recommendations not yet converted: the cross-sell pool."""
    total = next(iter(_rows(ev, "total", POOL)), None)
    products = _rows(ev, "product_type", ("potential_sales",))
    if not total or not total["records"]:
        return []
    top = max(products, key=lambda r: r["potential_sales"]) if products else None
    claim = (
        f"{total['records']:,} high-affinity recommendations are not accepted "
        f"({total['pending']:,} pending, {total['in_progress']:,} in progress, "
        f"{total['declined']:,} declined); at the average accepted sale of their product "
        f"they are worth {money(total['potential_sales'])}."
    )
    numbers = {
        "records": total["records"],
        "pending": total["pending"],
        "in_progress": total["in_progress"],
        "declined": total["declined"],
        "potential_sales": total["potential_sales"],
    }
    if top:
        claim += (
            f" {quote(top['product_type'])} is the largest pool: {money(top['potential_sales'])}."
        )
        numbers["top_potential_sales"] = top["potential_sales"]
    return [
        Finding(
            id="",
            kind="cross_sell_pool",
            title="Cross-sell pool of warm leads",
            claim=claim,
            numbers=numbers,
            evidence_ids=[ev["id"]],
            sample_size=int(total["records"]),
        )
    ]


def pipeline_backlog(ev: Ev) -> list[Finding]:
    """Share of recommendations still open (Pending or In Progress)."""
    rows = {
        r["value"]: r
        for r in _rows(ev, need=("records",))
        if r["dimension"] == "recommendation_status"
    }
    open_rows = [rows[s] for s in ("Pending", "In Progress") if s in rows]
    total = sum(r["records"] for r in rows.values())
    if not total or not open_rows:
        return []
    open_n = sum(r["records"] for r in open_rows)
    share = open_n / total
    return [
        Finding(
            id="",
            kind="pipeline_backlog",
            title="Open recommendations in the pipeline",
            claim=(
                f"{open_n:,} of {total:,} recommendations ({pct(share)}) are still pending or "
                "in progress."
            ),
            numbers={"open": open_n, "total": total, "share": share},
            evidence_ids=[ev["id"]],
            sample_size=total,
        )
    ]


def acceptance_trend(ev: Ev) -> list[Finding]:
    """Change of acceptance between the first and second half of the period."""
    rows = _rows(ev, need=("records", "accepted"))
    if len(rows) < 4:
        return []
    half = len(rows) // 2
    first, second = rows[:half], rows[half:]
    n1, k1 = sum(r["records"] for r in first), sum(r["accepted"] for r in first)
    n2, k2 = sum(r["records"] for r in second), sum(r["accepted"] for r in second)
    if min(n1, n2) < MIN_GROUP:
        return []
    gap = k2 / n2 - k1 / n1
    z = z_two_proportions(k2, n2, k1, n1)
    if abs(gap) < 0.05 or abs(z) < MIN_Z:
        return []
    direction = "improved" if gap > 0 else "declined"
    return [
        Finding(
            id="",
            kind="acceptance_trend",
            title=f"Acceptance has {direction}",
            claim=(
                f"Acceptance went from {pct(k1 / n1)} ({first[0]['month'][:7]} to "
                f"{first[-1]['month'][:7]}) to {pct(k2 / n2)} ({second[0]['month'][:7]} to "
                f"{second[-1]['month'][:7]})."
            ),
            numbers={"rate_before": k1 / n1, "rate_after": k2 / n2, "gap": gap},
            evidence_ids=[ev["id"]],
            effect_size=round(100 * gap, 1),
            effect_unit="pp",
            sample_size=n1 + n2,
            strength=_strength(gap, 0.1),
        )
    ]


# Fewer records than this cannot hold two groups of MIN_GROUP: no comparison is possible.
SMALL_SCOPE = 2 * MIN_GROUP
_FILTER_WORDS = {
    "segment": "segment = {}",
    "lifecycle_stage": "lifecycle stage = {}",
    "product_type": "product type = {}",
    "date_from": "from {}",
    "date_to": "to {}",
}


def _shown(value: Any) -> str:
    """A scope value in a sentence: text from the data quoted, a date as it is."""
    return quote(value) if isinstance(value, str) else str(value)


def scope_too_small(ev: Ev, scope: dict[str, Any]) -> list[Finding]:
    """Say that the scope holds no records, or too few to compare, and what to widen.

    `ev` is `tools.metrics.scope_coverage` evidence; `scope` the filters that are set
    (name -> value).
    """
    described = ", ".join(_FILTER_WORDS[k].format(_shown(v)) for k, v in scope.items())
    described = described or "all records"
    rows = _rows(ev, need=("records", "table_records"))
    if not rows or rows[0]["records"] >= SMALL_SCOPE:
        return []
    row = rows[0]
    n = int(row["records"])
    widen = [
        (key, int(row[f"without_{key}"]))
        for key in _FILTER_WORDS
        if key in scope and _number(row.get(f"without_{key}"))
    ]
    widen.sort(key=lambda kv: -kv[1])
    hints = [f"without {_FILTER_WORDS[k].format(_shown(scope[k]))}, {m:,} match" for k, m in widen]
    span = (
        f"The data holds {int(row['table_records']):,} recommendations, "
        f"{row['first_date']} to {row['last_date']}."
        if row["table_records"]
        else "The table holds no recommendations at all."
    )
    if n == 0:
        title = "No records match this scope"
        claim = f"No recommendation matches {described}: there is nothing to analyse."
    else:
        title = "Too few records to compare groups"
        claim = (
            f"Only {n:,} recommendations match {described}: too few to test any "
            f"relationship (a comparison needs at least {MIN_GROUP} records a group), "
            "so none is claimed."
        )
    claim += (" Widen it: " + "; ".join(hints) + ". " if hints else " ") + span
    numbers: dict[str, float] = {"records": n, "table_records": row["table_records"]}
    numbers.update({f"without_{k}": m for k, m in widen})
    return [
        Finding(
            id="",
            kind="scope",
            title=title,
            claim=claim,
            numbers=numbers,
            evidence_ids=[ev["id"]],
            sample_size=n,
            labels={k: str(v) for k, v in scope.items()},
        )
    ]
