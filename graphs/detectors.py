"""Deterministic detectors: the findings the insight engine does not make, from Evidence.

The engine (`graphs.engine`) tells which groups depart; these tell the portfolio's facts
(totals, the largest product by sales, value at risk, the cross-sell pool, the open
backlog, an empty or small scope) and which numeric columns move together (a
correlation is called out when |r| passes `MIN_CORRELATION` over at least 100 records).
Every number in a claim is in the finding's `numbers`, taken from the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from graphs.report import Finding
from tools.text import quote

MIN_GROUP = 30
MIN_CORRELATION = 0.3

Ev = dict[str, Any]
# The fields each kind of detector compares; rows missing any are left out.
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
                kind="correlation",
                measure=f"{min(a, b)}:{max(a, b)}",
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
