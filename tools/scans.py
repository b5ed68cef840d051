"""Insight scans: the sufficient statistics of every measure in every slice of a scope.

The insight engine (`graphs.insights`) tests and ranks; this module only reads, and
reads little: two passes over the scope, whatever its size, and never a row.

1. **Discovery.** Which columns are dimensions is read off the data, not off a list of
   names: a text column is one when it has from 2 to MAX_LEVELS distinct values and no
   more than a MAX_LEVEL_SHARE of its records are distinct (an identifier, a name or a
   per-record summary has nearly one value a record). The quartiles of each numeric
   column make its bands; the recommendation month is a dimension too (a series:
   `graphs.insights` looks for its breaks).
   The status values found make the status-share measures.
2. **Statistics.** One statement returns, for every value of every dimension, every
   cell of two categories of few values (and different facts), and the whole scope,
   each measure's count, sum and sum of squares. The categories of few values are
   grouped once into a base and rolled up from it (GROUPING SETS); the others are
   grouped from the records. Values past a dimension's TOP_VALUES (by records) are
   merged into OTHER here: sums add up.

Statements are written once in the canonical dialect with `:name` parameters (data
values such as status labels are parameters, never SQL text) and run through the
warehouse's own rendering, as the metric catalog's are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.metrics import Filters, used_params
from tools.schema import BY_NAME, COLUMNS, TABLE
from tools.warehouse import Warehouse

STATUS = "product_recommendation_status"
ACCEPTED = "Accepted"  # the source contract's status of a recommendation taken up
SALE = "product_sales_amount"
WHEN = "product_recommendation_date"
MAX_LEVELS = 200
MAX_LEVEL_SHARE = 0.2
TOP_VALUES = 12
MAX_STATUSES = 8
OTHER = "(other)"
MISSING = "(missing)"
QUARTILES = (0.25, 0.5, 0.75)
SCAN_TIMEOUT_S = 300.0
DESCRIBING = ("_trend", "_transition_date")  # suffixes of a column about another

# The means a bank reads, with what they measure; each is a column of the contract.
MEAN_MEASURES: tuple[tuple[str, str, str], ...] = (
    ("customer_churn_probability", "churn probability", "probability"),
    ("customer_satisfaction_score", "satisfaction", "score"),
    ("recommendation_score", "recommendation score", "score"),
    ("customer_product_affinity", "product affinity", "score"),
    ("account_balance", "account balance", "money"),
    ("customer_transaction_value", "transaction value", "money"),
    ("customer_transaction_count", "transaction count", "count"),
)


@dataclass(frozen=True)
class Measure:
    """A per-record value whose mean a slice is compared on.

    `value_sql` is a canonical-dialect expression over one record, NULL where the record
    does not count (a sale counts only on an accepted recommendation). A `share` takes
    0 or 1; a `mean` any number.
    """

    name: str
    label: str
    kind: str  # "share" | "mean"
    unit: str  # "share", "probability", "score", "money", "count"
    value_sql: str
    columns: tuple[str, ...]  # the columns it reads: a slice of them says nothing new
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def skewed(self) -> bool:
        """Money: a few large amounts dominate, so it is tested on a log scale."""
        return self.unit == "money"

    @property
    def tested_sql(self) -> str:
        """The value the test compares: the value itself, or its signed log for money."""
        if not self.skewed:
            return self.value_sql
        v = f"({self.value_sql})"
        return f"sign({v}) * ln(1 + abs({v}))"


@dataclass(frozen=True)
class Dimension:
    """A way to cut the scope: a column's values, a numeric column's bands, or a period."""

    name: str
    label: str
    kind: str  # "category" | "band" | "month"
    column: str
    group_sql: str  # the value of one record, as text
    params: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = ()  # the values' natural order, where they have one
    levels: int = 0  # distinct values in the scope (approximate), for a category


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics of one measure over a set of records."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float:
        """The mean (NaN without records)."""
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (0 below two records; never negative from rounding)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))

    def __add__(self, other: Stats) -> Stats:
        """The statistics of both sets of records together."""
        return Stats(self.n + other.n, self.total + other.total, self.squares + other.squares)

    def __sub__(self, other: Stats) -> Stats:
        """The statistics of these records less `other`, a subset of them."""
        return Stats(self.n - other.n, self.total - other.total, self.squares - other.squares)


def fingerprint(stats: Stats) -> tuple[int, str]:
    """What two groupings of the same records agree on, whatever order they summed in."""
    return stats.n, f"{stats.total:.9g}"


@dataclass(frozen=True)
class Slice:
    """One value of one dimension: its records and the statistics of each measure."""

    dimension: Dimension
    value: str
    records: int
    stats: dict[str, Stats]


@dataclass(frozen=True)
class Cell:
    """The records with one value of each of two dimensions, and their statistics."""

    first: Dimension
    first_value: str
    second: Dimension
    second_value: str
    records: int
    stats: dict[str, Stats]


@dataclass(frozen=True)
class Scan:
    """What a scan read: the scope's totals, and every slice of every dimension."""

    records: int
    totals: dict[str, Stats]
    measures: tuple[Measure, ...]
    dimensions: tuple[Dimension, ...]
    slices: tuple[Slice, ...]
    cells: tuple[Cell, ...]  # of two categories' kept values (no OTHER)
    excluded: dict[str, str]  # a text column that is no dimension -> why
    sql: tuple[str, ...]  # the statements run, for the evidence


def coupled(column: str) -> frozenset[str]:
    """The columns that state one fact with `column`, itself included.

    By the source contract a sale exists exactly when a recommendation was accepted, so
    status, sale amount and sale date are one fact; a `<name>_trend` or
    `<name>_transition_date` column describes `<name>`. A measure read off one of them
    is not sliced by another: that their values agree is how the data is made, not an
    insight.
    """
    contract = frozenset({STATUS, SALE, "product_sales_date"})
    if column in contract:
        return contract
    stem = column
    for suffix in DESCRIBING:
        stem = stem.removesuffix(suffix)
    return frozenset({stem, *(stem + s for s in DESCRIBING)} & set(BY_NAME)) | {column}


def tested(measure: Measure) -> str:
    """The key of the statistics a measure is tested on (its own, or its log scale's)."""
    return f"{measure.name}:log" if measure.skewed else measure.name


def _run(warehouse: Warehouse, sql: str, params: dict[str, Any], timeout_s: float) -> Any:
    return warehouse.run(sql, used_params(sql, params), timeout_s=timeout_s)


def _text_columns() -> list[str]:
    return [c.name for c in COLUMNS if c.type == "string"]


def _numeric_columns() -> list[str]:
    # A record's own bookkeeping (its update time) is no property of a customer.
    return [c.name for c in COLUMNS if c.type in ("double", "bigint") and c.group != "Record"]


def _discovery_sql(where: str) -> str:
    parts = ["count(*) AS records"]
    for col in _text_columns():
        parts.append(f"approx_count_distinct({col}) AS d_{col}")
    listed = ", ".join(str(q) for q in QUARTILES)
    for col in _numeric_columns():  # one sort a column for all its cut points
        parts.append(f"quantile_cont({col}, [{listed}]) AS q_{col}")
    return f"SELECT {', '.join(parts)} FROM {TABLE} WHERE {where}"


def _statuses_sql(where: str) -> str:
    return (
        f"SELECT {STATUS} AS status, count(*) AS n FROM {TABLE} WHERE {where} "
        f"GROUP BY {STATUS} ORDER BY n DESC, status LIMIT {MAX_STATUSES}"
    )


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_") or "blank"


def measures_for(statuses: Sequence[str]) -> tuple[Measure, ...]:
    """The measures of a scope whose status values are `statuses`."""
    out = []
    names: set[str] = set()
    for i, status in enumerate(statuses):
        name = f"share_{_slug(status)}"
        name = name if name not in names else f"{name}_{i}"  # "In Progress", "in-progress"
        names.add(name)
        out.append(
            Measure(
                name=name,
                label=f"share {status}",
                kind="share",
                unit="share",
                value_sql=f"CASE WHEN {STATUS} = :st{i} THEN 1 ELSE 0 END",
                columns=(STATUS,),
                params={f"st{i}": status},
            )
        )
    out.extend(
        Measure(f"mean_{col}", label, "mean", unit, col, (col,))
        for col, label, unit in MEAN_MEASURES
    )
    out.append(
        Measure(
            name="mean_sale",
            label="mean sale of an accepted recommendation",
            kind="mean",
            unit="money",
            value_sql=f"CASE WHEN {STATUS} = :accepted THEN {SALE} END",
            columns=(STATUS, SALE),
            params={"accepted": ACCEPTED},
        )
    )
    return tuple(out)


def _band_dimension(col: str, cuts: Sequence[float]) -> Dimension | None:
    cuts = sorted({c for c in cuts if c is not None and math.isfinite(c)})
    if not cuts:
        return None
    labels = [f"up to {_num(cuts[0])}"]
    labels += [f"{_num(lo)} to {_num(hi)}" for lo, hi in zip(cuts, cuts[1:], strict=False)]
    labels.append(f"over {_num(cuts[-1])}")
    params: dict[str, Any] = {f"b_{col}_{i}": c for i, c in enumerate(cuts)}
    params |= {f"l_{col}_{i}": label for i, label in enumerate(labels)}
    whens = " ".join(f"WHEN {col} <= :b_{col}_{i} THEN :l_{col}_{i}" for i in range(len(cuts)))
    group = f"CASE WHEN {col} IS NULL THEN NULL {whens} ELSE :l_{col}_{len(cuts)} END"
    label = _label(col)
    return Dimension(
        name=f"band_{col}", label=f"{label} band", kind="band", column=col,
        group_sql=group, params=params, order=tuple(labels),
    )  # fmt: skip


def _label(column: str) -> str:
    """A column's name as words, without the 'customer' every column is about."""
    return column.removeprefix("customer_").replace("_", " ")


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def discover(warehouse: Warehouse, filters: Filters | None = None) -> tuple[
    int, tuple[Measure, ...], tuple[Dimension, ...], dict[str, str], list[str]
]:  # fmt: skip
    """Read which columns cut the scope and which statuses it has (one pass, and a count).

    Return (records, measures, dimensions, excluded columns with the reason, SQL run).
    """
    where, params = (filters or Filters()).where()
    sql = [_discovery_sql(where), _statuses_sql(where)]
    found = _run(warehouse, sql[0], params, SCAN_TIMEOUT_S)
    row = dict(zip(found.columns, found.rows[0], strict=True))
    records = int(row["records"] or 0)
    statuses = _run(warehouse, sql[1], params, SCAN_TIMEOUT_S)
    measures = measures_for([str(s) for s, _ in statuses.rows if s is not None])
    dims: list[Dimension] = []
    excluded: dict[str, str] = {}
    for col in _text_columns():
        distinct = int(row[f"d_{col}"] or 0)
        if distinct < 2:
            excluded[col] = "one value in the scope"
        elif distinct > MAX_LEVELS or distinct > MAX_LEVEL_SHARE * records:
            excluded[col] = f"{distinct:,} distinct values in {records:,} records: a key or text"
        else:
            label = _label(col)
            dims.append(Dimension(col, label, "category", col, col, levels=distinct))
    for col in _numeric_columns():
        band = _band_dimension(col, list(row[f"q_{col}"] or ()))
        if band is not None:
            dims.append(band)
    dims.append(Dimension("month", "month", "month", WHEN, f"strftime({WHEN}, '%Y-%m')"))
    return records, measures, tuple(dims), excluded, sql


def _pairs(dims: Sequence[Dimension]) -> list[tuple[int, int]]:
    """The pairs whose cells are read: the base's categories (`_based`), of different facts."""
    cats = sorted(_based(dims))
    return [
        (i, j)
        for a, i in enumerate(cats)
        for j in cats[a + 1 :]
        if dims[j].column not in coupled(dims[i].column)
    ]


def _based(dims: Sequence[Dimension]) -> set[int]:
    """The dimensions aggregated first into one base table, then rolled up.

    One pass groups the records by every category of at most TOP_VALUES values at once;
    each such category's slices and each pair's cells are then sums over that base, which
    holds at most one row a combination that occurs (far fewer than the records in a large
    table; never more), not a pass each. Pairs are read among these categories.
    """
    return {i for i, d in enumerate(dims) if d.kind == "category" and d.levels <= TOP_VALUES}


def _stats_sql(
    where: str, measures: Sequence[Measure], dims: Sequence[Dimension]
) -> tuple[str, dict[str, Any]]:
    based = _based(dims)
    direct = [i for i in range(len(dims)) if i not in based]
    # A value that is not finite is a data problem (`quality` counts it), not a number
    # to average: it would make every mean and test it enters NaN.
    values = [f"{_finite(m.value_sql)} AS v{j}" for j, m in enumerate(measures)]
    values += [f"{_finite(m.tested_sql)} AS w{j}" for j, m in enumerate(measures) if m.skewed]
    sums: list[tuple[str, str]] = [("records", "count(*)")]  # (name, aggregate of records)
    for j, m in enumerate(measures):
        sums += [(f"n{j}", f"count(v{j})"), (f"s{j}", f"sum(v{j})")]
        sums.append((f"q{j}", f"sum(v{j})" if m.kind == "share" else f"sum(v{j} * v{j})"))
        if m.skewed:
            sums += [(f"ws{j}", f"sum(w{j})"), (f"wq{j}", f"sum(w{j} * w{j})")]

    def scoped(ids: Sequence[int]) -> str:
        groups = [f"{dims[i].group_sql} AS g{i}" for i in ids]
        return f"SELECT {', '.join([*groups, *values])} FROM {TABLE} WHERE {where}"

    def columns(ids: set[int] | list[int]) -> list[str]:
        out = [f"g{i}" if i in ids else f"CAST(NULL AS VARCHAR) AS g{i}" for i in range(len(dims))]
        return out + [
            f"GROUPING(g{i}) AS x{i}" if i in ids else f"1 AS x{i}" for i in range(len(dims))
        ]

    keys = [f"g{i}" for i in sorted(based)]
    base = (
        f"SELECT {', '.join([*keys, *(f'{agg} AS {name}' for name, agg in sums)])} "
        f"FROM ({scoped(sorted(based))}) AS scoped"
        + (f" GROUP BY {', '.join(keys)}" if keys else "")
    )
    rolled_sets = [f"(g{i})" for i in sorted(based)]
    rolled_sets += [f"(g{i}, g{j})" for i, j in _pairs(dims)]
    rolled = (
        f"SELECT {', '.join([*columns(based), *(f'sum({n}) AS {n}' for n, _ in sums)])} "
        f"FROM ({base}) AS base GROUP BY GROUPING SETS ({', '.join([*rolled_sets, '()'])})"
    )
    parts = [rolled]
    if direct:
        parts.append(
            f"SELECT {', '.join([*columns(direct), *(f'{agg} AS {n}' for n, agg in sums)])} "
            f"FROM ({scoped(direct)}) AS scoped "
            f"GROUP BY GROUPING SETS ({', '.join(f'(g{i})' for i in direct)})"
        )
    params: dict[str, Any] = {}
    for dim in dims:
        params.update(dim.params)
    for measure in measures:
        params.update(measure.params)
    return " UNION ALL ".join(parts), params


def scan(warehouse: Warehouse, filters: Filters | None = None) -> Scan:
    """Read the scope's dimensions, then every slice's statistics (two passes)."""
    records, measures, dims, excluded, sql = discover(warehouse, filters)
    where, scope_params = (filters or Filters()).where()
    stats_sql, params = _stats_sql(where, measures, dims)
    found = _run(warehouse, stats_sql, {**params, **scope_params}, SCAN_TIMEOUT_S)
    at = {c: i for i, c in enumerate(found.columns)}
    totals: dict[str, Stats] = {}
    raw: dict[int, list[tuple[str, int, dict[str, Stats]]]] = {i: [] for i in range(len(dims))}
    pair_rows: list[tuple[int, str, int, str, int, dict[str, Stats]]] = []
    for row in found.rows:
        stats = {
            m.name: Stats(
                int(row[at[f"n{j}"]] or 0),
                float(row[at[f"s{j}"]] or 0.0),
                float(row[at[f"q{j}"]] or 0.0),
            )
            for j, m in enumerate(measures)
        }
        for j, m in enumerate(measures):  # the scale tested, beside the scale told
            if m.skewed:
                stats[tested(m)] = Stats(
                    stats[m.name].n,
                    float(row[at[f"ws{j}"]] or 0.0),
                    float(row[at[f"wq{j}"]] or 0.0),
                )
        grouped = [i for i in range(len(dims)) if row[at[f"x{i}"]] == 0]
        values = [MISSING if row[at[f"g{i}"]] is None else str(row[at[f"g{i}"]]) for i in grouped]
        if not grouped:
            totals = stats
        elif len(grouped) == 1:
            raw[grouped[0]].append((values[0], int(row[at["records"]]), stats))
        else:
            pair_rows.append(
                (grouped[0], values[0], grouped[1], values[1], int(row[at["records"]]), stats)
            )
    slices = []
    for i, dim in enumerate(dims):
        slices.extend(_kept(dim, raw[i], measures))
    shown = {(s.dimension.name, s.value) for s in slices}
    cells = tuple(
        Cell(dims[i], a, dims[j], b, n, stats)
        for i, a, j, b, n, stats in pair_rows
        if (dims[i].name, a) in shown and (dims[j].name, b) in shown
    )
    return Scan(
        records=records,
        totals=totals,
        measures=measures,
        dimensions=dims,
        slices=tuple(slices),
        cells=cells,
        excluded=excluded,
        sql=(*sql, stats_sql),
    )


def _kept(
    dim: Dimension, values: list[tuple[str, int, dict[str, Stats]]], measures: Sequence[Measure]
) -> list[Slice]:
    """The dimension's slices: its TOP_VALUES by records and the rest merged as OTHER."""
    if dim.kind in ("month", "band"):
        return [Slice(dim, v, n, s) for v, n, s in sorted(values)]
    # Ties in records are broken by the sums, so two columns that name the same records
    # keep the same values (and alias), whatever their labels' order.
    values.sort(key=lambda item: (-item[1], *(fingerprint(st) for st in item[2].values()), item[0]))
    kept = [Slice(dim, v, n, s) for v, n, s in values[:TOP_VALUES]]
    rest = values[TOP_VALUES:]
    if rest:
        merged = {k: Stats(0, 0.0, 0.0) for k in values[0][2]}
        for _, _, s in rest:
            merged = {k: merged[k] + s[k] for k in merged}
        kept.append(Slice(dim, OTHER, sum(n for _, n, _ in rest), merged))
    return kept


# -- data quality ------------------------------------------------------------------------
PROFILE = ("customer_segment", "customer_name", "customer_email")  # one per customer
OUTLIER_MADS = 10.0  # a sale this many robust deviations above its product type's median
ROBUST = 1.4826  # MAD to standard deviation, for normal data


@dataclass(frozen=True)
class Quality:
    """What is wrong in the scope's records, counted before any total is stated.

    `out_of_range` counts, per numeric column, the values that are not finite or lie
    outside the contract's range; the others are the counts their names say. The
    outlying sales are those more than OUTLIER_MADS robust deviations above the median
    accepted sale of their product type; `sales_total` and `outlier_sales` are the sums
    over all accepted sales and over those outliers.
    """

    records: int
    out_of_range: dict[str, int]
    accepted_without_sale: int
    sale_without_acceptance: int
    sale_before_recommendation: int
    customers: int
    conflicting_customers: int
    outliers: int
    sales_total: float
    outlier_sales: float
    outliers_by_type: dict[str, tuple[int, float]]
    sql: tuple[str, ...]


def _not_finite(column: str) -> str:
    """NaN or infinite, in words both DuckDB and Spark SQL know (Spark has no isfinite)."""
    x = f"CAST({column} AS DOUBLE)"
    return f"(isnan({x}) OR abs({x}) = CAST('Infinity' AS DOUBLE))"


def _finite(expr: str) -> str:
    """`expr` as a double, NULL where it is NaN or infinite."""
    return f"CASE WHEN {_not_finite(f'({expr})')} THEN NULL ELSE CAST(({expr}) AS DOUBLE) END"


def _quality_sql(where: str) -> tuple[str, str]:
    checks = []
    for c in COLUMNS:
        if c.type not in ("double", "bigint"):
            continue
        bad = [_not_finite(c.name)]
        if c.low is not None:
            bad.append(f"{c.name} < {c.low}")
        if c.high is not None:
            bad.append(f"{c.name} > {c.high}")
        checks.append(f"count(*) FILTER (WHERE {' OR '.join(bad)}) AS bad_{c.name}")
    accepted = f"{STATUS} = :accepted"
    records = (
        f"SELECT count(*) AS records, {', '.join(checks)}, "
        f"count(*) FILTER (WHERE {accepted} AND coalesce({SALE}, 0) <= 0) AS accepted_no_sale, "
        f"count(*) FILTER (WHERE NOT {accepted} AND {SALE} > 0) AS sale_no_accept, "
        f"count(*) FILTER (WHERE product_sales_date < {WHEN}) AS sale_before, "
        "count(DISTINCT customer_id) AS customers "
        f"FROM {TABLE} WHERE {where}"
    )
    # One number a profile: its hash differs where any of its fields does.
    profile = (
        "SELECT count(*) FROM (SELECT customer_id, min(h) <> max(h) AS split FROM "
        f"(SELECT customer_id, hash({', '.join(PROFILE)}) AS h FROM {TABLE} WHERE {where}) "
        "AS p GROUP BY customer_id) AS c WHERE split"
    )
    return records, profile


def _outliers_sql(where: str) -> str:
    # Robust per product type: the median accepted sale and the median absolute deviation.
    return f"""
WITH sales AS (
  SELECT product_type, {SALE} AS sale FROM {TABLE}
  WHERE {where} AND {STATUS} = :accepted AND {SALE} > 0 AND NOT {_not_finite(SALE)}
), centre AS (
  SELECT product_type, median(sale) AS med FROM sales GROUP BY product_type
), spread AS (
  SELECT s.product_type, c.med, median(abs(s.sale - c.med)) AS mad
  FROM sales AS s JOIN centre AS c USING (product_type) GROUP BY s.product_type, c.med
)
SELECT s.product_type, count(*) AS sales, sum(s.sale) AS total,
  count(*) FILTER (WHERE p.mad > 0 AND s.sale > p.med + {OUTLIER_MADS} * {ROBUST} * p.mad)
    AS outliers,
  coalesce(sum(s.sale) FILTER (
    WHERE p.mad > 0 AND s.sale > p.med + {OUTLIER_MADS} * {ROBUST} * p.mad), 0) AS outlying
FROM sales AS s JOIN spread AS p USING (product_type)
GROUP BY s.product_type ORDER BY s.product_type
"""


def quality(warehouse: Warehouse, filters: Filters | None = None) -> Quality:
    """Count what is wrong in the scope's records (three statements)."""
    where, params = (filters or Filters()).where()
    params = {**params, "accepted": ACCEPTED}
    records_sql, profile_sql = _quality_sql(where)
    outliers_sql = _outliers_sql(where)
    found = _run(warehouse, records_sql, params, SCAN_TIMEOUT_S)
    row = dict(zip(found.columns, found.rows[0], strict=True))
    conflicting = _run(warehouse, profile_sql, params, SCAN_TIMEOUT_S).rows[0][0]
    by_type = _run(warehouse, outliers_sql, params, SCAN_TIMEOUT_S).rows
    return Quality(
        records=int(row["records"]),
        out_of_range={
            k.removeprefix("bad_"): int(v) for k, v in row.items() if k.startswith("bad_") and v
        },
        accepted_without_sale=int(row["accepted_no_sale"]),
        sale_without_acceptance=int(row["sale_no_accept"]),
        sale_before_recommendation=int(row["sale_before"]),
        customers=int(row["customers"]),
        conflicting_customers=int(conflicting or 0),
        outliers=sum(int(r[3]) for r in by_type),
        sales_total=sum(float(r[2] or 0) for r in by_type),
        outlier_sales=sum(float(r[4] or 0) for r in by_type),
        outliers_by_type={str(r[0]): (int(r[3]), float(r[4] or 0)) for r in by_type if r[3]},
        sql=(records_sql, profile_sql, outliers_sql),
    )
