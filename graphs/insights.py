"""The insight engine: every slice of the scope tested on every measure, ranked by impact.

`tools.scans.scan` returns the sufficient statistics (n, sum, sum of squares) of each
measure in each value of each dimension; here each value is compared with the rest of
the scope (its statistics are the total's less its own): a share with the two-proportion
z test, a mean with Welch's t. The whole family of one scan is controlled with
Benjamini–Hochberg at FDR_Q, and an insight must also clear a minimum group size on both
sides and an effect-size floor, so a large table does not turn every trifle into a
finding and a table with nothing in it yields nothing.

Each insight carries what a reader and the grounding check need: n on both sides, the
two values, the gap, q, its impact (records × standardized gap, which ranks insights of
any measure against each other) and, where the measure is money or drives it, the money
at stake.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from graphs.detectors import z_two_proportions
from tools.scans import (
    ACCEPTED,
    MISSING,
    OTHER,
    Cell,
    Measure,
    Scan,
    Slice,
    Stats,
    coupled,
    fingerprint,
    tested,
)

FDR_Q = 0.01
MIN_GROUP = 30  # records on each side of a comparison
MIN_MONTHS = 3  # months on each side of a break in a series
TIME_KINDS = ("month",)
MIN_SHARE_GAP = 0.03  # three percentage points
MIN_STANDARDIZED_GAP = 0.15  # of a mean, in pooled standard deviations
CHURN = "mean_customer_churn_probability"
BALANCE = "mean_account_balance"
SALE = "mean_sale"


@dataclass(frozen=True)
class Insight:
    """One slice that departs from the rest of the scope on one measure, or a break.

    A `slice` compares a dimension's value with the rest of the scope; a `cell`, the
    records of two dimensions' values with what the two margins predict. A `shift` is a
    break in a measure's monthly series: `value` is the first month after it, `value_in`
    the measure from then on and `value_rest` before it.
    """

    kind: str  # "slice" | "cell" | "shift"
    dimension: str
    dimension_label: str
    value: str
    measure: str
    measure_label: str
    unit: str
    n: int  # records of the slice the measure counts
    n_rest: int
    value_in: float
    value_rest: float
    p: float
    q: float
    standardized: float  # the gap in pooled standard deviations (a share's: of p(1-p))
    money: float | None  # what closing the gap is worth, where the measure is money's
    also: tuple[str, ...] = ()  # other dimensions whose value names the same records
    # A `cell`: the records with `value` of `dimension` and `second_value` of
    # `second_dimension`; `value_rest` is what the two margins predict for them.
    second_dimension: str = ""
    second_label: str = ""
    second_value: str = ""

    @property
    def gap(self) -> float:
        """The slice's value less the rest's."""
        return self.value_in - self.value_rest

    @property
    def impact(self) -> float:
        """Records × standardized gap: ranks insights of every measure together."""
        return self.n * abs(self.standardized)


def _insight(
    kind: str,
    measure: Measure,
    where: tuple[str, str, str],
    inside: Stats,
    n_rest: int,
    value_rest: float,
    p: float,
    standardized: float,
    money: float | None,
    **more: Any,
) -> Insight:
    """An insight of `measure` on the records `inside` of `where` (name, label, value)."""
    name, label, value = where
    return Insight(
        kind=kind, dimension=name, dimension_label=label, value=value, measure=measure.name,
        measure_label=measure.label, unit=measure.unit, n=inside.n, n_rest=n_rest,
        value_in=inside.mean, value_rest=value_rest, p=p, q=more.pop("q", 1.0),
        standardized=standardized, money=money, **more,
    )  # fmt: skip


def _compare(measure: Measure, inside: Stats, rest: Stats) -> tuple[float, float] | None:
    """Return (p value, standardized gap) of `inside` against `rest`, or None if untestable."""
    if inside.n < MIN_GROUP or rest.n < MIN_GROUP:
        return None
    m1, m2 = inside.mean, rest.mean
    if measure.kind == "share":
        pooled = (inside.total + rest.total) / (inside.n + rest.n)
        spread = pooled * (1 - pooled)
        if spread <= 0:
            return None
        z = z_two_proportions(inside.total, inside.n, rest.total, rest.n)
        return float(2 * sps.norm.sf(abs(z))), (m1 - m2) / math.sqrt(spread)
    v1, v2 = inside.variance, rest.variance
    if v1 + v2 <= 0:
        return None
    result = sps.ttest_ind_from_stats(
        m1, math.sqrt(v1), inside.n, m2, math.sqrt(v2), rest.n, equal_var=False
    )
    pooled_sd = math.sqrt(((inside.n - 1) * v1 + (rest.n - 1) * v2) / (inside.n + rest.n - 2))
    return float(result.pvalue), (m1 - m2) / pooled_sd if pooled_sd > 0 else 0.0


def _large_enough(measure: Measure, gap: float, standardized: float) -> bool:
    if measure.kind == "share":
        return abs(gap) >= MIN_SHARE_GAP
    return abs(standardized) >= MIN_STANDARDIZED_GAP


def _money(measure: Measure, part: Slice | Cell, scan: Scan, gap: float) -> float | None:
    """What closing a slice's (or a cell's) gap is worth, from the data; None if not money."""
    if measure.unit == "money":
        return abs(gap) * part.stats[measure.name].n
    if measure.name.startswith("share_") and measure.label == f"share {ACCEPTED}":
        # Sales a lagging group would bring at its peers' rate, at its own average sale.
        sale = part.stats.get(SALE)
        mean_sale = sale.mean if sale is not None and sale.n else scan.totals[SALE].mean
        return abs(gap) * part.records * mean_sale if math.isfinite(mean_sale) else None
    if measure.name == CHURN and BALANCE in part.stats:
        # The balance the gap in churn puts at risk.
        return abs(gap) * part.stats[BALANCE].total
    return None


def _distinct_slices(scan: Scan) -> tuple[list[Slice], dict[int, tuple[str, ...]]]:
    """The slices, each set of records once; and, by slice, the other names it goes by.

    Two columns that name the same thing (a product's id and its name) cut the scope
    into the same slices. The same records with the same sums are one slice: it is
    told once, by a name before an id, and says which other columns name it.
    """

    def preference(part: Slice) -> tuple[bool, int]:
        return part.dimension.column.endswith("_id"), scan.dimensions.index(part.dimension)

    groups: dict[tuple[object, ...], list[Slice]] = {}
    for part in scan.slices:
        key = (part.records, *(fingerprint(st) for st in part.stats.values()))
        groups.setdefault(key, []).append(part)
    kept, aliases = [], {}
    for same in groups.values():
        same.sort(key=preference)
        first = same[0]
        kept.append(first)
        others = [p for p in same[1:] if p.dimension is not first.dimension]
        aliases[id(first)] = tuple(p.dimension.name for p in others)
    kept.sort(key=lambda part: scan.slices.index(part))
    return kept, aliases


def find(scan: Scan, q: float = FDR_Q) -> list[Insight]:
    """Return the slices that depart from the rest, strongest impact first.

    Every comparison made counts in the family, tested or not big enough, so the false
    discovery rate holds over all that was looked at.
    """
    slices, aliases = _distinct_slices(scan)
    tried: list[tuple[Measure, Slice, float, float]] = []
    for part in slices:
        if part.dimension.kind in TIME_KINDS:
            continue  # time is read as a series (`_shifts`), not a month against the rest
        for measure in scan.measures:
            if any(c in coupled(part.dimension.column) for c in measure.columns):
                continue  # read off the dimension's own fact: nothing new
            key = tested(measure)
            result = _compare(measure, part.stats[key], scan.totals[key] - part.stats[key])
            if result is not None:
                tried.append((measure, part, *result))
    shifts = _shifts(scan)
    cells = _cells(scan, {(p.dimension.name, p.value) for p in slices})
    if not tried and not shifts and not cells:
        return []
    ps = [p for _, _, p, _ in tried] + [s.p for s in shifts] + [i.p for i, _ in cells]
    qs = [float(x) for x in sps.false_discovery_control(ps, method="bh")]
    # The largest p value the family kept: a re-test below must clear the same bar.
    cut = max((p for p, q_value in zip(ps, qs, strict=True) if q_value <= q), default=0.0)
    kept = [
        (dataclasses.replace(insight, q=q_value), cell)
        for (insight, cell), q_value in zip(cells, qs[len(tried) + len(shifts) :], strict=True)
        if q_value <= q
        and _large_enough(_measure(scan, insight.measure), insight.gap, insight.standardized)
    ]
    told_cells = _accept_cells(kept, scan, cut)
    found = [
        dataclasses.replace(shift, q=q_value)
        for shift, q_value in zip(shifts, qs[len(tried) : len(tried) + len(shifts)], strict=True)
        if q_value <= q
        and _large_enough(_measure(scan, shift.measure), shift.gap, shift.standardized)
    ] + [insight for insight, _ in told_cells]
    taken: dict[tuple[str, str], list[Slice]] = {}  # (dimension, measure) -> slices told
    ranked = sorted(
        zip(tried, qs[: len(tried)], strict=True),
        key=lambda item: -item[0][1].stats[item[0][0].name].n * abs(item[0][3]),
    )
    for (measure, part, p, standardized), q_value in ranked:
        inside = part.stats[measure.name]
        rest = scan.totals[measure.name] - inside
        gap = inside.mean - rest.mean
        if q_value > q or not _large_enough(measure, gap, standardized):
            continue
        measured = [c for i, c in told_cells if i.measure == measure.name]
        if _explained_by_cells(measure, part, scan, measured, cut):
            continue
        told = taken.setdefault((part.dimension.name, measure.name), [])
        if not _departs_from_the_others(measure, part, told, measured, scan, cut):
            continue  # it differs from the rest only because what was told does
        told.append(part)
        found.append(
            _insight(
                "slice", measure, (part.dimension.name, part.dimension.label, part.value),
                inside, rest.n, rest.mean, p, standardized, _money(measure, part, scan, gap),
                q=float(q_value), also=aliases.get(id(part), ()),
            )
        )  # fmt: skip
    found.sort(key=lambda i: -i.impact)
    return found


def _departs_from_the_others(
    measure: Measure, part: Slice, told: list[Slice], cells: list[Cell], scan: Scan, cut: float
) -> bool:
    """Whether a slice still departs once what was told before is left out of the rest.

    When one value of a dimension (or one cell in it) is far off, every other value
    differs from a rest that holds it; a slice is told only if it differs from the rest
    without the values and cells of its dimension told already.
    """
    left_out: list[Slice | Cell] = list(told)
    for c in cells:  # cells of this dimension outside the slice and the values told
        for dim, value in ((c.first, c.first_value), (c.second, c.second_value)):
            if dim is part.dimension and value != part.value:
                if all(value != s.value for s in told):
                    left_out.append(c)
    if not left_out:
        return True
    key = tested(measure)
    others = scan.totals[key] - part.stats[key]
    others_raw = scan.totals[measure.name] - part.stats[measure.name]
    for earlier in left_out:
        others, others_raw = others - earlier.stats[key], others_raw - earlier.stats[measure.name]
    result = _compare(measure, part.stats[key], others)
    if result is None:
        return False
    p, standardized = result
    gap = part.stats[measure.name].mean - others_raw.mean
    return p <= cut and _large_enough(measure, gap, standardized)


Pair = tuple[str, str]  # the names of a cell's two dimensions


def _pairs(scan: Scan) -> dict[Pair, list[Cell]]:
    out: dict[Pair, list[Cell]] = {}
    for cell in scan.cells:
        out.setdefault((cell.first.name, cell.second.name), []).append(cell)
    return out


def _fit(cells: list[Cell], key: str, left_out: Sequence[Cell] = ()) -> dict[int, float]:
    """The additive fit of a pair's cells: overall + a row effect + a column effect.

    Weighted least squares over the cells' means (weights: their records), so two
    columns whose values go together (most "Inactive" customers use a product only
    "Occasional"ly) are fitted jointly: margins alone would count their shared effect
    twice. Returns, by `id` of each cell the fit can predict, the value it predicts.
    `left_out` cells are not fitted (what was told already), but are predicted.
    """
    skip = {id(c) for c in left_out}
    rows = sorted({c.first_value for c in cells})
    cols = sorted({c.second_value for c in cells})
    at_row, at_col = {v: i for i, v in enumerate(rows)}, {v: i for i, v in enumerate(cols)}
    width = 1 + len(rows) - 1 + len(cols) - 1

    def design(c: Cell) -> np.ndarray:
        x = np.zeros(width)
        x[0] = 1.0
        if at_row[c.first_value]:
            x[at_row[c.first_value]] = 1.0
        if at_col[c.second_value]:
            x[len(rows) - 1 + at_col[c.second_value]] = 1.0
        return x

    fitted = [c for c in cells if id(c) not in skip and c.stats[key].n]
    if len(fitted) < 2:
        return {}
    weights = np.sqrt([c.stats[key].n for c in fitted])
    x = np.array([design(c) for c in fitted])
    y = np.array([c.stats[key].mean for c in fitted])
    beta, *_ = np.linalg.lstsq(x * weights[:, None], y * weights, rcond=None)
    seen_rows = {c.first_value for c in fitted}
    seen_cols = {c.second_value for c in fitted}
    return {
        id(c): float(design(c) @ beta)
        for c in cells
        if c.first_value in seen_rows and c.second_value in seen_cols
    }


def _margins(
    cells: list[Cell], cell: Cell, key: str, left_out: Sequence[Cell]
) -> tuple[Stats, Stats, Stats]:
    """The fitted records of the cell's row, of its column, and of the whole pair."""
    skip = {id(c) for c in left_out}
    empty = Stats(0, 0.0, 0.0)
    row, col, total = empty, empty, empty
    for c in cells:
        if id(c) in skip:
            continue
        total = total + c.stats[key]
        if c.first_value == cell.first_value:
            row = row + c.stats[key]
        if c.second_value == cell.second_value:
            col = col + c.stats[key]
    return row, col, total


def _cell_test(
    measure: Measure,
    cells: list[Cell],
    cell: Cell,
    key: str,
    left_out: Sequence[Cell] = (),
    fit: dict[int, float] | None = None,
) -> tuple[float, float, float] | None:
    """(p, standardized gap, prediction) of a cell against the additive fit of its pair.

    The prediction is estimated too: the noise of its row and column counts with the
    cell's own. `fit`: the pair's fit on `key` without `left_out`, if made already.
    """
    inside = cell.stats[key]
    row, col, total = _margins(cells, cell, key, [c for c in left_out if c is not cell])
    if inside.n < MIN_GROUP or row.n < MIN_GROUP or col.n < MIN_GROUP or total.n < 2:
        return None
    expected = (fit if fit is not None else _fit(cells, key, left_out)).get(id(cell))
    if expected is None:
        return None
    if measure.kind == "share":
        e = min(max(expected, 1e-6), 1 - 1e-6)
        spread = math.sqrt(total.mean * (1 - total.mean))
        noise = e * (1 - e) / inside.n + _share_var(row) + _share_var(col)
    else:
        spread = math.sqrt(total.variance)
        noise = inside.variance / inside.n + row.variance / row.n + col.variance / col.n
    if noise <= 0 or spread <= 0:
        return None
    z = (inside.mean - expected) / math.sqrt(noise)
    return float(2 * sps.norm.sf(abs(z))), (inside.mean - expected) / spread, expected


def _cells(scan: Scan, kept: set[tuple[str, str]]) -> list[tuple[Insight, Cell]]:
    """Each cell against the additive fit of its pair; q is set with the family."""
    by_slice = {(p.dimension.name, p.value): p for p in scan.slices}
    out = []
    for pair in _pairs(scan).values():
        first, second = pair[0].first, pair[0].second
        for measure in scan.measures:
            if any(
                c in coupled(first.column) or c in coupled(second.column) for c in measure.columns
            ):
                continue
            key = tested(measure)  # tested on this scale; told on the measure's own
            raw_fit, fit = _fit(pair, measure.name), _fit(pair, key)
            for cell in pair:
                if (first.name, cell.first_value) not in kept or (
                    second.name,
                    cell.second_value,
                ) not in kept:
                    continue  # told under another name
                records = (
                    by_slice[(first.name, cell.first_value)].records,
                    by_slice[(second.name, cell.second_value)].records,
                )
                if cell.records in records:
                    continue  # one value implies the other: the cell is a margin
                result = _cell_test(measure, pair, cell, key, fit=fit)
                if result is None or id(cell) not in raw_fit:
                    continue
                p, standardized, _ = result
                raw = cell.stats[measure.name]
                expected_raw = raw_fit[id(cell)]
                money = _money(measure, cell, scan, raw.mean - expected_raw)
                insight = _insight(
                    "cell", measure, (first.name, first.label, cell.first_value), raw,
                    scan.totals[key].n - raw.n, expected_raw, p, standardized, money,
                    second_dimension=second.name, second_label=second.label,
                    second_value=cell.second_value,
                )  # fmt: skip
                out.append((insight, cell))
    return out


def _accept_cells(
    candidates: list[tuple[Insight, Cell]], scan: Scan, cut: float
) -> list[tuple[Insight, Cell]]:
    """The cells to tell, strongest first, each re-tested without the ones told before.

    An effect in one cell also moves its row's and column's effects in the fit, so the
    other cells of that row and column depart from it; each is told only if it departs
    from a fit that leaves out the cells already told.
    """
    pairs = _pairs(scan)
    accepted: list[tuple[Insight, Cell]] = []
    for insight, cell in sorted(candidates, key=lambda item: -item[0].impact):
        measure = _measure(scan, insight.measure)
        told = [
            c for i, c in accepted
            if i.measure == insight.measure and (c.first, c.second) == (cell.first, cell.second)
        ]  # fmt: skip
        if told:
            pair = pairs[(cell.first.name, cell.second.name)]
            result = _cell_test(measure, pair, cell, tested(measure), told)
            if result is None or result[0] > cut:
                continue
            if not _large_enough(measure, insight.gap, result[1]):
                continue
        accepted.append((insight, cell))
    return accepted


def _share_var(part: Stats) -> float:
    return part.mean * (1 - part.mean) / part.n


def _explained_by_cells(
    measure: Measure, part: Slice, scan: Scan, cells: list[Cell], cut: float
) -> bool:
    """Whether a slice departs only through cells told already: without them it does not.

    An effect that lives in one cell raises its two margins too; it is told as the cell.
    """
    inside = [
        c for c in cells
        if (part.dimension, part.value) in ((c.first, c.first_value), (c.second, c.second_value))
    ]  # fmt: skip
    if not inside:
        return False
    key = tested(measure)
    left, left_raw = part.stats[key], part.stats[measure.name]
    for c in inside:
        left, left_raw = left - c.stats[key], left_raw - c.stats[measure.name]
    rest, rest_raw = (
        scan.totals[key] - part.stats[key],
        scan.totals[measure.name] - part.stats[measure.name],
    )
    result = _compare(measure, left, rest)
    if result is None:
        return True
    p, standardized = result
    return p > cut or not _large_enough(measure, left_raw.mean - rest_raw.mean, standardized)


def _measure(scan: Scan, name: str) -> Measure:
    return next(m for m in scan.measures if m.name == name)


def _shifts(scan: Scan) -> list[Insight]:
    """Each measure's strongest break in its monthly series, if the series is long enough.

    Every split leaving MIN_MONTHS on each side is tried (the last one is the recent
    window against the past); the best split's p value is multiplied by the number of
    splits tried, for the search. q is set with the whole family.
    """
    months = sorted(
        (part for part in scan.slices if part.dimension.kind == "month"),
        key=lambda part: part.value,
    )
    months = [m for m in months if m.value != OTHER and m.value != MISSING]
    splits = range(MIN_MONTHS, len(months) - MIN_MONTHS + 1)
    if not splits:
        return []
    out = []
    for measure in scan.measures:
        # The break is where it explains most of the series' variation (the between-
        # sides sum of squares), then tested there.
        best: tuple[float, int] | None = None
        for k in splits:
            before = sum((m.stats[measure.name] for m in months[:k]), Stats(0, 0.0, 0.0))
            after = sum((m.stats[measure.name] for m in months[k:]), Stats(0, 0.0, 0.0))
            if before.n and after.n:
                explained = (
                    before.n * after.n / (before.n + after.n) * (after.mean - before.mean) ** 2
                )
                if best is None or explained > best[0]:
                    best = (explained, k)
        if best is None:
            continue
        k = best[1]
        before = sum((m.stats[measure.name] for m in months[:k]), Stats(0, 0.0, 0.0))
        after = sum((m.stats[measure.name] for m in months[k:]), Stats(0, 0.0, 0.0))
        key = tested(measure)
        result = _compare(
            measure,
            sum((m.stats[key] for m in months[k:]), Stats(0, 0.0, 0.0)),
            sum((m.stats[key] for m in months[:k]), Stats(0, 0.0, 0.0)),
        )
        if result is None:
            continue
        p, standardized = result
        money = abs(after.mean - before.mean) * after.n if measure.unit == "money" else None
        out.append(
            _insight(
                "shift", measure, ("month", "month", months[k].value), after, before.n,
                before.mean, min(1.0, p * len(splits)), standardized, money,
            )
        )  # fmt: skip
    return out


def strongest(insights: Iterable[Insight], per_measure: int = 3) -> list[Insight]:
    """The insights in impact order, at most `per_measure` of any one measure."""
    seen: dict[str, int] = {}
    out = []
    for insight in insights:
        if seen.get(insight.measure, 0) < per_measure:
            seen[insight.measure] = seen.get(insight.measure, 0) + 1
            out.append(insight)
    return out
