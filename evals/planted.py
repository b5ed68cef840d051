"""Planted scenarios: tables with one known pattern written in by SQL, and its truth.

A scenario starts from a base table: the generated one (where the source contract holds:
a sale exactly when a recommendation is accepted), or a null one, the generated table
with every column shuffled on its own, so no column says anything about another. It
then writes one pattern into it with SQL (an effect in a slice, in one cell, from one
month on; outlying amounts; broken records; another bank's vocabulary) and reads the
truth back with SQL: the entity (the column values the pattern lives in), the measure,
and the number a report should state. Nothing here asks the code under test.

`score_insights` holds the insight engine to them: a planted scenario is found when an
insight names its entity and measure with its number; on a null base anything else
found is invented; a table with nothing planted must yield nothing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tools.schema import COLUMN_NAMES, TABLE

TOLERANCE = 1e-6  # relative: the engine states the number the table holds
Con = duckdb.DuckDBPyConnection


@dataclass(frozen=True)
class Truth:
    """What a scenario planted: where, which measure, and its value there (by SQL).

    `where` is ((column, value), ...): one pair for a slice, two for a cell, ("month",
    first month) for a break, () for a data problem. For a data problem `measure` is the
    count's name in `tools.scans.Quality` and `value` the count.
    """

    kind: str  # "slice" | "cell" | "shift" | "quality"
    measure: str
    where: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Scenario:
    """A table to build from a base, and what it holds."""

    name: str
    base: str  # "null" | "generated"
    plant: Callable[[Con], Truth | None]  # writes the pattern, returns its truth
    salt: int = 1


def _one(con: Con, sql: str, params: Sequence[Any] = ()) -> Any:
    return con.execute(sql, list(params)).fetchone()[0]  # type: ignore[index]


def _largest(con: Con, column: str, rank: int = 0) -> str:
    """The value of `column` with the `rank`-th most records (ties by value)."""
    return str(
        _one(
            con,
            f"SELECT {column} FROM {TABLE} GROUP BY 1 ORDER BY count(*) DESC, 1 "
            f"LIMIT 1 OFFSET {rank}",
        )
    )


def _mean(con: Con, measure_sql: str, where: str, params: Sequence[Any]) -> float:
    return float(_one(con, f"SELECT avg({measure_sql}) FROM {TABLE} WHERE {where}", params))


def _shift_mean(column: str, measure: str, by: str, rank: int = 0) -> Callable[[Con], Truth]:
    """Shift `measure` (a column) by the SQL expression `by` where `column` has a value."""

    def plant(con: Con) -> Truth:
        value = _largest(con, column, rank)
        con.execute(f"UPDATE {TABLE} SET {measure} = {by} WHERE {column} = ?", [value])
        inside = _mean(con, measure, f"{column} = ?", [value])
        return Truth("slice", f"mean_{measure}", ((column, value),), inside)

    return plant


def _accepted_share(con: Con, where: str, params: Sequence[Any]) -> float:
    return _mean(
        con, "CASE WHEN product_recommendation_status = 'Accepted' THEN 1 ELSE 0 END", where,
        params,
    )  # fmt: skip


def _lag_acceptance(columns: Sequence[str], ranks: Sequence[int]) -> Callable[[Con], Truth]:
    """Decline half the accepted recommendations where `columns` have their values."""

    def plant(con: Con) -> Truth:
        values = [_largest(con, c, r) for c, r in zip(columns, ranks, strict=True)]
        where = " AND ".join(f"{c} = ?" for c in columns)
        con.execute(
            f"UPDATE {TABLE} SET product_recommendation_status = 'Declined', "
            "product_sales_amount = 0, product_sales_date = NULL "
            f"WHERE {where} AND product_recommendation_status = 'Accepted' "
            "AND hash(record_id) % 2 = 0",
            values,
        )
        share = _accepted_share(con, where, values)
        kind = "slice" if len(columns) == 1 else "cell"
        return Truth(kind, "share_accepted", tuple(zip(columns, values, strict=True)), share)

    return plant


def _cell_mean(columns: Sequence[str], measure: str, by: str) -> Callable[[Con], Truth]:
    def plant(con: Con) -> Truth:
        values = [_largest(con, c) for c in columns]
        where = " AND ".join(f"{c} = ?" for c in columns)
        con.execute(f"UPDATE {TABLE} SET {measure} = {by} WHERE {where}", values)
        inside = _mean(con, measure, where, values)
        return Truth("cell", f"mean_{measure}", tuple(zip(columns, values, strict=True)), inside)

    return plant


def _break(measure: str, by: str, months_from_end: int | None = None) -> Callable[[Con], Truth]:
    """Change `measure` from a month on: the middle one, or `months_from_end` before the end."""

    def plant(con: Con) -> Truth:
        month = "strftime(product_recommendation_date, '%Y-%m')"
        months = [
            m for (m,) in con.execute(f"SELECT DISTINCT {month} FROM {TABLE} ORDER BY 1").fetchall()
        ]
        start = months[-months_from_end] if months_from_end else months[len(months) // 2]
        con.execute(f"UPDATE {TABLE} SET {measure} = {by} WHERE {month} >= ?", [start])
        after = _mean(con, measure, f"{month} >= ?", [start])
        return Truth("shift", f"mean_{measure}", (("month", start),), after)

    return plant


def _outlying_sales(con: Con) -> Truth:
    product = _largest(con, "product_type")
    con.execute(
        f"UPDATE {TABLE} SET product_sales_amount = product_sales_amount * 1000 WHERE record_id "
        f"IN (SELECT record_id FROM {TABLE} WHERE product_type = ? AND "
        "product_recommendation_status = 'Accepted' AND product_sales_amount > 0 "
        "ORDER BY hash(record_id) LIMIT 5)",
        [product],
    )
    return Truth("quality", "outliers", (("product_type", product),), 5)


def _sales_missing(con: Con) -> Truth:
    con.execute(
        f"UPDATE {TABLE} SET product_sales_amount = 0, product_sales_date = NULL WHERE "
        f"record_id IN (SELECT record_id FROM {TABLE} WHERE product_recommendation_status = "
        "'Accepted' ORDER BY hash(record_id) LIMIT 12)"
    )
    count = _one(
        con,
        f"SELECT count(*) FROM {TABLE} WHERE product_recommendation_status = 'Accepted' "
        "AND coalesce(product_sales_amount, 0) <= 0",
    )
    return Truth("quality", "accepted_without_sale", (), float(count))


def _conflicting_profiles(con: Con) -> Truth:
    con.execute(
        f"UPDATE {TABLE} SET customer_email = 'moved.' || record_id || '@example.com' "
        f"WHERE customer_id IN (SELECT customer_id FROM {TABLE} GROUP BY 1 "
        "HAVING count(*) >= 2 ORDER BY hash(customer_id) LIMIT 3)"
    )
    count = _one(
        con,
        f"SELECT count(*) FROM (SELECT customer_id FROM {TABLE} GROUP BY 1 "
        "HAVING count(DISTINCT customer_email) > 1 OR count(DISTINCT customer_segment) > 1 "
        "OR count(DISTINCT customer_name) > 1)",
    )
    return Truth("quality", "conflicting_customers", (), float(count))


def _other_vocabulary(con: Con) -> Truth:
    """Another bank's segment names, and churn raised in one of them."""
    names = ["Private Banking", "Mass Market", "SME", "Corporate", "Youth"]
    old = [
        v
        for (v,) in con.execute(
            f"SELECT DISTINCT customer_segment FROM {TABLE} ORDER BY 1"
        ).fetchall()
    ]
    for before, after in zip(old, names, strict=False):
        con.execute(
            f"UPDATE {TABLE} SET customer_segment = ? WHERE customer_segment = ?", [after, before]
        )
    return _shift_mean(
        "customer_segment", "customer_churn_probability",
        "least(1.0, customer_churn_probability + 0.15)", rank=1,
    )(con)  # fmt: skip


def _nothing(con: Con) -> None:
    return None


def _uniform(con: Con) -> None:
    """The source API's 750-record shape with every number uniform at random: no pattern."""
    con.execute(f"DELETE FROM {TABLE} WHERE record_id NOT IN (SELECT record_id FROM {TABLE} "
                "ORDER BY hash(record_id) LIMIT 750)")  # fmt: skip
    for column, low, high in (
        ("customer_churn_probability", 0, 1), ("customer_satisfaction_score", 0, 1),
        ("recommendation_score", 0, 1), ("customer_product_affinity", 0, 1),
        ("account_balance", -5000, 200000), ("customer_transaction_value", 0, 50000),
    ):  # fmt: skip
        con.execute(
            f"UPDATE {TABLE} SET {column} = {low} + ({high} - {low}) * "
            f"((hash(record_id || '{column}') % 1000000) / 1000000.0)"
        )
    return None


SCENARIOS: tuple[Scenario, ...] = (
    *(Scenario(f"null_{salt}", "null", _nothing, salt) for salt in (1, 2, 3, 4)),
    Scenario("uniform_750", "null", _uniform, 5),
    Scenario("churn_in_terms", "null", _shift_mean(
        "product_terms", "customer_churn_probability",
        "least(1.0, customer_churn_probability + 0.2)")),
    Scenario("satisfaction_in_interests", "null", _shift_mean(
        "customer_product_interests", "customer_satisfaction_score",
        "greatest(0.0, customer_satisfaction_score - 0.2)"), 2),
    Scenario("count_in_usage_trend", "null", _shift_mean(
        "customer_product_usage_trend", "customer_transaction_count",
        "CAST(customer_transaction_count * 1.8 AS BIGINT)", rank=1), 3),
    Scenario("balance_of_a_product", "null", _shift_mean(
        "product_type", "account_balance", "account_balance * 3", rank=2), 4),
    Scenario("value_in_affinity_trend", "null", _shift_mean(
        "customer_product_affinity_trend", "customer_transaction_value",
        "customer_transaction_value * 2"), 5),
    Scenario("acceptance_of_a_segment", "null", _lag_acceptance(["customer_segment"], [2]), 6),
    Scenario("acceptance_of_a_stage", "null", _lag_acceptance(
        ["customer_lifecycle_stage"], [0]), 7),
    Scenario("acceptance_in_a_cell", "null", _lag_acceptance(
        ["customer_lifecycle_stage", "product_type"], [1, 0]), 8),
    Scenario("affinity_in_a_cell", "null", _cell_mean(
        ["customer_segment", "product_type"], "customer_product_affinity",
        "greatest(0.0, customer_product_affinity - 0.3)"), 9),
    Scenario("satisfaction_breaks", "null", _break(
        "customer_satisfaction_score", "customer_satisfaction_score * 0.75"), 10),
    Scenario("churn_rises_lately", "null", _break(
        "customer_churn_probability", "least(1.0, customer_churn_probability + 0.15)", 3), 11),
    Scenario("churn_in_another_vocabulary", "null", _other_vocabulary, 12),
    Scenario("outlying_sales", "generated", _outlying_sales),
    Scenario("sales_missing", "generated", _sales_missing),
    Scenario("conflicting_profiles", "generated", _conflicting_profiles),
)  # fmt: skip


def shuffle(con: Con, salt: int) -> None:
    """Put each column of the table in an order of its own (hash-ordered, repeatable)."""
    parts = [
        f"(SELECT {c}, row_number() OVER (ORDER BY hash(record_id || '{salt}-{i}')) AS k "
        f"FROM {TABLE}) AS t{i}"
        for i, c in enumerate(COLUMN_NAMES)
    ]
    joins = " ".join(f"JOIN {p} USING (k)" for p in parts[1:])
    select = ", ".join(f"t{i}.{c}" for i, c in enumerate(COLUMN_NAMES))
    con.execute(f"CREATE TEMP TABLE mixed AS SELECT {select} FROM {parts[0]} {joins}")
    con.execute(f"DELETE FROM {TABLE}")
    con.execute(f"INSERT INTO {TABLE} SELECT * FROM mixed")
    con.execute("DROP TABLE mixed")


def build(scenario: Scenario, generated: Path, to: Path) -> Truth | None:
    """Write the scenario's table at `to` from the generated table; return its truth."""
    shutil.copy(generated, to)
    con = duckdb.connect(str(to))
    try:
        if scenario.base == "null":
            shuffle(con, scenario.salt)
        return scenario.plant(con)
    finally:
        con.close()


def matches(truth: Truth, insight: Any) -> bool:
    """Whether an insight states the planted pattern: its entity, measure and number."""
    if insight.kind != truth.kind or insight.measure != truth.measure:
        return False
    named = {(insight.dimension, insight.value)}
    if insight.kind == "cell":
        named.add((insight.second_dimension, insight.second_value))
    if named != set(truth.where):
        return False
    return abs(insight.value_in - truth.value) <= TOLERANCE * max(1.0, abs(truth.value))


def about(truth: Truth, insight: Any) -> bool:
    """Whether an insight is about the planted entity at all (a consequence, not invented)."""
    named = {(insight.dimension, insight.value), (insight.second_dimension, insight.second_value)}
    return bool(named & set(truth.where))


@dataclass(frozen=True)
class Score:
    """How the engine did on one scenario."""

    scenario: str
    planted: bool
    found: bool
    invented: int  # insights on a null base about nothing planted
    insights: int


def score_insights(scenario: Scenario, truth: Truth | None, path: Path) -> Score:
    """Run the engine on a built scenario's table and score it against its truth."""
    from graphs.insights import find
    from tools.scans import quality, scan
    from tools.warehouse import DuckDBWarehouse

    wh = DuckDBWarehouse(path, result_cache=0)
    try:
        found = find(scan(wh))
        problems = quality(wh) if truth is not None and truth.kind == "quality" else None
    finally:
        wh.close()
    if truth is None:
        return Score(scenario.name, False, True, len(found), len(found))
    if truth.kind == "quality":
        assert problems is not None
        if truth.measure == "outliers":
            count = problems.outliers_by_type.get(truth.where[0][1], (0, 0.0))[0]
            hit = count >= truth.value
        else:
            hit = getattr(problems, truth.measure) == truth.value
        return Score(scenario.name, True, hit, 0, len(found))
    hit = any(matches(truth, i) for i in found)
    invented = 0 if scenario.base != "null" else sum(1 for i in found if not about(truth, i))
    return Score(scenario.name, True, hit, invented, len(found))


# -- a report against the truth ----------------------------------------------------------
# The words a statement about a measure uses, as a banking manager would write them.
MEASURE_WORDS: dict[str, tuple[str, ...]] = {
    "share_accepted": ("accept",),
    "mean_customer_churn_probability": ("churn",),
    "mean_customer_satisfaction_score": ("satisf",),
    "mean_recommendation_score": ("score",),
    "mean_customer_product_affinity": ("affinity",),
    "mean_account_balance": ("balance",),
    "mean_customer_transaction_value": ("transaction value", "transaction amount"),
    "mean_customer_transaction_count": ("transaction count", "transactions"),
    "outliers": ("outlier", "outlying"),
    "accepted_without_sale": ("without a sale", "no sale"),
    "conflicting_customers": ("conflict", "disagree"),
}
OVERALL, OPTIMIZATION = "overall-performance", "optimization-opportunities"
FINANCIAL, STRATEGIC = "financial-impact", "strategic-recommendations"
ALL_AREAS = (OVERALL, OPTIMIZATION, FINANCIAL, STRATEGIC)
# Which focus areas a pattern in a measure belongs in: performance, targeting, money and
# strategy all read acceptance, churn and money; only the non-financial ones read
# satisfaction, activity and the targeting scores. A data problem belongs in every one.
BELONGS: dict[str, tuple[str, ...]] = {
    "share_accepted": ALL_AREAS,
    "mean_customer_churn_probability": ALL_AREAS,
    "mean_account_balance": ALL_AREAS,
    "mean_customer_transaction_value": ALL_AREAS,
    "mean_customer_satisfaction_score": (OVERALL, OPTIMIZATION, STRATEGIC),
    "mean_customer_transaction_count": (OVERALL, OPTIMIZATION, STRATEGIC),
    "mean_customer_product_affinity": (OVERALL, OPTIMIZATION, STRATEGIC),
    "mean_recommendation_score": (OVERALL, OPTIMIZATION, STRATEGIC),
}
NUMBER_TOLERANCE = 0.01  # relative: a statement may round the number it states
_WRITTEN = re.compile(r"[-−]?\$?\d[\d,]*(?:\.\d+)?\s*%?")


def belongs(truth: Truth) -> tuple[str, ...]:
    """The focus areas whose reports should state the truth."""
    return ALL_AREAS if truth.kind == "quality" else BELONGS.get(truth.measure, ALL_AREAS)


def _readings(token: str) -> list[tuple[float, float]]:
    """(value, rounding) readings of a written number: '12.3%' reads 12.3 and 0.123."""
    text = token.replace("$", "").replace(",", "").replace("−", "-").strip()
    percent = text.endswith("%")
    text = text.rstrip("%").strip()
    value = float(text)
    rounding = 0.5 * 10 ** -(len(text.split(".")[1]) if "." in text else 0)
    out = [(value, rounding)]
    if percent:
        out.append((value / 100, rounding / 100))
    return out


def states(truth: Truth, text: str) -> str | None:
    """The line of `text` that states the truth, in any wording, or None.

    A line states it when it names each value of the truth's entity, uses a word of its
    measure, and writes a number within rounding (or NUMBER_TOLERANCE) of its value.
    """
    words = MEASURE_WORDS.get(truth.measure, (truth.measure,))
    for line in text.replace("\\", "").splitlines():
        low = line.lower()
        if not all(value in line for _, value in truth.where):
            continue
        if not any(w in low for w in words):
            continue
        for match in _WRITTEN.finditer(line):
            for value, rounding in _readings(match.group(0)):
                slack = max(rounding, NUMBER_TOLERANCE * abs(truth.value))
                if abs(value - truth.value) <= slack + 1e-12:
                    return line.strip()
    return None
