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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from scipy import stats as sps

from tools.scans import (
    ACCEPTED,
    MISSING,
    OTHER,
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
        z = (m1 - m2) / math.sqrt(spread * (1 / inside.n + 1 / rest.n))
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


def _money(measure: Measure, part: Slice, scan: Scan, gap: float) -> float | None:
    """What closing the slice's gap to the rest is worth, from the data; None if not money."""
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
    ps = [p for _, _, p, _ in tried] + [s.p for s in (*shifts, *cells)]
    qs = [float(x) for x in sps.false_discovery_control(ps, method="bh")]
    found = [
        dataclasses.replace(other, q=q_value)
        for other, q_value in zip((*shifts, *cells), qs[len(tried) :], strict=True)
        if q_value <= q
        and _large_enough(_measure(scan, other.measure), other.gap, other.standardized)
    ]
    explained = [i for i in found if i.kind == "cell"]
    for (measure, part, p, standardized), q_value in zip(tried, qs[: len(tried)], strict=True):
        inside = part.stats[measure.name]
        rest = scan.totals[measure.name] - inside
        gap = inside.mean - rest.mean
        if q_value > q or not _large_enough(measure, gap, standardized):
            continue
        if _explained_by_a_cell(part, measure, inside, gap, explained):
            continue
        found.append(
            _insight(
                "slice", measure, (part.dimension.name, part.dimension.label, part.value),
                inside, rest.n, rest.mean, p, standardized, _money(measure, part, scan, gap),
                q=float(q_value), also=aliases.get(id(part), ()),
            )
        )  # fmt: skip
    found.sort(key=lambda i: -i.impact)
    return found


def _cells(scan: Scan, kept: set[tuple[str, str]]) -> list[Insight]:
    """Each cell against what its two margins predict (additively); q set with the family."""
    by_slice = {(p.dimension.name, p.value): p for p in scan.slices}
    out = []
    for cell in scan.cells:
        first = (cell.first.name, cell.first_value)
        second = (cell.second.name, cell.second_value)
        if first not in kept or second not in kept:
            continue  # told under another name
        if cell.records in (by_slice[first].records, by_slice[second].records):
            continue  # one value implies the other: the cell is a margin
        for measure in scan.measures:
            if any(
                c in coupled(cell.first.column) or c in coupled(cell.second.column)
                for c in measure.columns
            ):
                continue
            key = tested(measure)  # tested on this scale; told on the measure's own
            raw = cell.stats[measure.name]
            expected_raw = (
                by_slice[first].stats[measure.name].mean
                + by_slice[second].stats[measure.name].mean
                - scan.totals[measure.name].mean
            )
            inside, total = cell.stats[key], scan.totals[key]
            a, b = by_slice[first].stats[key], by_slice[second].stats[key]
            if inside.n < MIN_GROUP or not a.n or not b.n or total.n < 2:
                continue
            expected = a.mean + b.mean - total.mean
            # The prediction is estimated too: its margins' noise counts with the cell's.
            if measure.kind == "share":
                e = min(max(expected, 1e-6), 1 - 1e-6)
                spread = math.sqrt(total.mean * (1 - total.mean))
                noise = e * (1 - e) / inside.n + _share_var(a) + _share_var(b)
            else:
                spread = math.sqrt(total.variance)
                noise = inside.variance / inside.n + a.variance / a.n + b.variance / b.n
            se = math.sqrt(noise)
            if se <= 0 or spread <= 0:
                continue
            z = (inside.mean - expected) / se
            money = abs(raw.mean - expected_raw) * raw.n if measure.unit == "money" else None
            out.append(
                _insight(
                    "cell", measure, (cell.first.name, cell.first.label, cell.first_value),
                    raw, total.n - inside.n, expected_raw, float(2 * sps.norm.sf(abs(z))),
                    (inside.mean - expected) / spread, money,
                    second_dimension=cell.second.name, second_label=cell.second.label,
                    second_value=cell.second_value,
                )
            )  # fmt: skip
    return out


def _share_var(part: Stats) -> float:
    return part.mean * (1 - part.mean) / part.n


def _explained_by_a_cell(
    part: Slice, measure: Measure, inside: Stats, gap: float, cells: list[Insight]
) -> bool:
    """Whether one of the slice's cells departs by more than half the slice's own excess.

    An effect that lives in one cell raises its two margins too; it is told as the cell.
    """
    excess = gap * inside.n
    for cell in cells:
        if cell.measure != measure.name:
            continue
        if (part.dimension.name, part.value) not in (
            (cell.dimension, cell.value),
            (cell.second_dimension, cell.second_value),
        ):
            continue
        if excess and (cell.value_in - cell.value_rest) * cell.n / excess > 0.5:
            return True
    return False


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
