"""Every catalog metric checked against an independent pandas computation."""

import datetime
import shutil
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.conftest import frame
from tools.metrics import (
    CATALOG,
    CORRELATION_COLUMNS,
    Filters,
    MetricBatch,
    UnknownMetric,
    dashboard,
    run_metric,
    run_metrics,
)
from tools.warehouse import DuckDBWarehouse, Warehouse, as_records


@pytest.fixture(scope="module")
def df(seeded_path: Path) -> pd.DataFrame:
    return frame(seeded_path)


def _accepted(df: pd.DataFrame) -> pd.Series:
    return df.product_recommendation_status == "Accepted"


def _band(values: pd.Series) -> pd.Series:
    labels = ["Low (<0.25)", "Moderate (0.25-0.50)", "High (0.50-0.75)", "Very high (>=0.75)"]
    return pd.Series(np.array(labels)[np.digitize(values, [0.25, 0.5, 0.75])], index=values.index)


def test_kpis(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    row = run_metric(warehouse, "kpis").rows[0]
    assert row["records"] == len(df)
    assert row["avg_recommendation_score"] == pytest.approx(df.recommendation_score.mean())
    assert row["avg_satisfaction_score"] == pytest.approx(df.customer_satisfaction_score.mean())
    assert row["avg_churn_probability"] == pytest.approx(df.customer_churn_probability.mean())
    assert row["total_product_sales"] == pytest.approx(df.product_sales_amount.sum())
    assert row["acceptance_rate"] == pytest.approx(_accepted(df).mean())
    assert row["avg_transaction_value"] == pytest.approx(df.customer_transaction_value.mean())
    assert row["avg_account_balance"] == pytest.approx(df.account_balance.mean())
    assert row["avg_transaction_count"] == pytest.approx(df.customer_transaction_count.mean())
    assert row["total_transaction_count"] == df.customer_transaction_count.sum()


def test_distributions(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    ev = run_metric(warehouse, "distributions", params={"top_n": 3})
    expected = {
        "recommendation_status": df.product_recommendation_status,
        "affinity_band": _band(df.customer_product_affinity),
        "lifecycle_stage": df.customer_lifecycle_stage,
        "product_type": df.product_type,
        "customer_segment": df.customer_segment,
    }
    for dim, series in expected.items():
        got = [r for r in ev.rows if r["dimension"] == dim]
        counts = series.value_counts()
        top = counts.sort_values(ascending=False).head(3)
        assert [r["records"] for r in got] == list(top.values), dim
        for r in got:
            assert r["records"] == counts[r["value"]]
            assert r["share"] == pytest.approx(counts[r["value"]] / len(df))
            assert r["product_sales"] == pytest.approx(
                df.product_sales_amount[series == r["value"]].sum()
            )


def test_segment_profile(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = {r["customer_segment"]: r for r in run_metric(warehouse, "segment_profile").rows}
    for seg, g in df.groupby("customer_segment"):
        r = rows[seg]
        assert r["records"] == len(g)
        assert r["avg_account_balance"] == pytest.approx(g.account_balance.mean())
        assert r["avg_transaction_value"] == pytest.approx(g.customer_transaction_value.mean())
        assert r["avg_churn_probability"] == pytest.approx(g.customer_churn_probability.mean())
        assert r["acceptance_rate"] == pytest.approx(_accepted(g).mean())
        assert r["product_sales"] == pytest.approx(g.product_sales_amount.sum())


def test_acceptance_rates(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "acceptance_rates", params={"min_records": 5}).rows
    d = df.assign(
        segment=df.customer_segment,
        lifecycle_stage=df.customer_lifecycle_stage,
        affinity_band=_band(df.customer_product_affinity),
        score_band=_band(df.recommendation_score),
        accepted=_accepted(df),
        declined=df.product_recommendation_status == "Declined",
    )
    breakdowns = {
        "segment": ["segment"],
        "lifecycle_stage": ["lifecycle_stage"],
        "product_type": ["product_type"],
        "affinity_band": ["affinity_band"],
        "score_band": ["score_band"],
        "segment_product": ["segment", "product_type"],
        "segment_stage_product": ["segment", "lifecycle_stage", "product_type"],
    }
    for name, keys in breakdowns.items():
        g = d.groupby(keys).agg(
            records=("record_id", "size"),
            accepted=("accepted", "sum"),
            acceptance_rate=("accepted", "mean"),
            decline_rate=("declined", "mean"),
            avg_affinity=("customer_product_affinity", "mean"),
        )
        g = g[g.records >= 5]
        got = {tuple(r[k] for k in keys): r for r in rows if r["breakdown"] == name}
        assert len(got) == len(g), name
        for key, exp_row in g.iterrows():
            r = got[key if isinstance(key, tuple) else (key,)]
            assert r["records"] == exp_row.records
            assert r["accepted"] == exp_row.accepted
            assert r["acceptance_rate"] == pytest.approx(exp_row.acceptance_rate)
            assert r["decline_rate"] == pytest.approx(exp_row.decline_rate)
            assert r["avg_affinity"] == pytest.approx(exp_row.avg_affinity)
            assert r["records"] == r["accepted"] + r["declined"] + r["pending"] + r["in_progress"]


def test_correlations(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "correlations").rows
    assert "last_updated_epoch" not in CORRELATION_COLUMNS
    expected = df[list(CORRELATION_COLUMNS)].astype(float).corr()
    assert len(rows) == len(CORRELATION_COLUMNS) * (len(CORRELATION_COLUMNS) - 1) // 2
    for r in rows:
        assert r["r"] == pytest.approx(expected.loc[r["column_a"], r["column_b"]], abs=1e-9)
        assert r["n"] == len(df)
    assert [abs(r["r"]) for r in rows] == sorted((abs(r["r"]) for r in rows), reverse=True)


def test_revenue(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "revenue").rows
    total = df.product_sales_amount.sum()
    for name, keys in (
        ("product_type", ["product_type"]),
        ("segment", ["customer_segment"]),
        ("product_segment", ["product_type", "customer_segment"]),
    ):
        got = {tuple(r[k] for k in keys): r for r in rows if r["breakdown"] == name}
        for key, g in df.groupby(keys):
            r = got[key]
            acc = g[_accepted(g)]
            assert r["records"] == len(g)
            assert r["accepted"] == len(acc)
            assert r["total_sales"] == pytest.approx(g.product_sales_amount.sum())
            if len(acc):
                assert r["avg_sale"] == pytest.approx(acc.product_sales_amount.mean())
            assert r["share_of_sales"] == pytest.approx(g.product_sales_amount.sum() / total)


def _customers(df: pd.DataFrame) -> pd.DataFrame:
    """Each customer's latest record, with sales summed over all of theirs."""
    latest = df.sort_values("last_updated_epoch").groupby("customer_id").last()
    c = latest.assign(sales=df.groupby("customer_id").product_sales_amount.sum())
    c["bar"] = c.account_balance * c.customer_churn_probability
    c["sar"] = c.sales * c.customer_churn_probability
    return c


def _check_value_at_risk(rows: list[dict], c: pd.DataFrame, high_risk: float) -> None:
    total = next(r for r in rows if r["breakdown"] == "total")
    assert total["customers"] == len(c)
    assert total["balance_at_risk"] == pytest.approx(c.bar.sum())
    assert total["sales_at_risk"] == pytest.approx(c.sar.sum())
    assert total["high_risk_customers"] == (c.customer_churn_probability >= high_risk).sum()
    for seg, g in c.groupby("customer_segment"):
        r = next(r for r in rows if r["breakdown"] == "segment" and r["customer_segment"] == seg)
        assert r["customers"] == len(g)
        assert r["total_balance"] == pytest.approx(g.account_balance.sum())
        assert r["balance_at_risk"] == pytest.approx(g.bar.sum())
        assert r["median_account_balance"] == pytest.approx(g.account_balance.median())
    for stage, g in c.groupby("customer_lifecycle_stage"):
        r = next(
            r
            for r in rows
            if r["breakdown"] == "lifecycle_stage" and r["customer_lifecycle_stage"] == stage
        )
        assert r["avg_churn_probability"] == pytest.approx(g.customer_churn_probability.mean())
        assert r["median_account_balance"] is None


def test_value_at_risk(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    """A seeded warehouse answers from its customer snapshot."""
    assert warehouse.customer_snapshot()
    ev = run_metric(warehouse, "value_at_risk", params={"high_risk": 0.5})
    assert "fpr_customers" in ev.sql
    _check_value_at_risk(ev.rows, _customers(df), 0.5)


def test_value_at_risk_from_the_records(seeded_path: Path, tmp_path: Path) -> None:
    """A table changed behind the snapshot's back is not answered from the snapshot."""
    path = tmp_path / "changed.duckdb"
    shutil.copy(seeded_path, path)
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM fpr_records WHERE customer_segment = 'Student'")
    wh = DuckDBWarehouse(path)
    try:
        assert not wh.customer_snapshot()
        ev = run_metric(wh, "value_at_risk")
        assert "fpr_customers" not in ev.sql
        df = frame(path)
        _check_value_at_risk(ev.rows, _customers(df), 0.6)
        assert "Student" not in {r["customer_segment"] for r in ev.rows}
    finally:
        wh.close()


def test_value_at_risk_scope(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    """Product and dates pick the records first; segment and stage then pick customers."""
    f = Filters(segment="Retail", product_type="Credit Card")
    ev = run_metric(warehouse, "value_at_risk", f)
    assert "fpr_customers" not in ev.sql  # a product filter needs the records
    c = _customers(df[df.product_type == "Credit Card"])
    _check_value_at_risk(ev.rows, c[c.customer_segment == "Retail"], 0.6)
    only_segment = run_metric(warehouse, "value_at_risk", Filters(segment="Retail"))
    assert "fpr_customers" in only_segment.sql
    c = _customers(df)
    _check_value_at_risk(only_segment.rows, c[c.customer_segment == "Retail"], 0.6)


def test_churn_by_satisfaction(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "churn_by_satisfaction").rows
    band = np.minimum(np.floor(df.customer_satisfaction_score * 5), 4)
    for r in rows:
        g = df[band == round(r["satisfaction_from"] * 5)]
        assert r["records"] == len(g)
        assert r["avg_churn_probability"] == pytest.approx(g.customer_churn_probability.mean())
    assert sum(r["records"] for r in rows) == len(df)


def test_monthly_trend(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "monthly_trend").rows
    month = pd.to_datetime(df.product_recommendation_date).dt.to_period("M").astype(str)
    by_month = df.groupby(month)
    assert [r["month"][:7] for r in rows] == sorted(by_month.groups)
    for r in rows:
        g = by_month.get_group(r["month"][:7])
        assert r["records"] == len(g)
        assert r["acceptance_rate"] == pytest.approx(_accepted(g).mean())
        assert r["product_sales"] == pytest.approx(g.product_sales_amount.sum())


def test_high_affinity_unconverted(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "high_affinity_unconverted", params={"min_affinity": 0.6}).rows
    ticket = df[_accepted(df)].groupby("product_type").product_sales_amount.mean()
    hot = df[(df.customer_product_affinity >= 0.6) & ~_accepted(df)]
    potential = hot.product_type.map(ticket).fillna(0)
    total = next(r for r in rows if r["breakdown"] == "total")
    assert total["records"] == len(hot)
    assert total["potential_sales"] == pytest.approx(potential.sum())
    assert total["declined"] == (hot.product_recommendation_status == "Declined").sum()
    for ptype, g in hot.groupby("product_type"):
        r = next(r for r in rows if r["breakdown"] == "product_type" and r["product_type"] == ptype)
        assert r["records"] == len(g)
        assert r["potential_sales"] == pytest.approx(potential[g.index].sum())


def test_filters_scope_every_metric(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    f = Filters(
        segment="Retail",
        lifecycle_stage="Engaged",
        date_from=datetime.date(2024, 3, 1),
        date_to=datetime.date(2025, 3, 31),
    )
    dates = pd.to_datetime(df.product_recommendation_date)
    sub = df[
        (df.customer_segment == "Retail")
        & (df.customer_lifecycle_stage == "Engaged")
        & (dates >= "2024-03-01")
        & (dates <= "2025-03-31")
    ]
    ev = run_metric(warehouse, "kpis", f)
    assert ev.rows[0]["records"] == len(sub) > 0
    assert ev.rows[0]["total_product_sales"] == pytest.approx(sub.product_sales_amount.sum())
    assert ev.parameters["f_segment"] == "Retail"
    assert ev.parameters["f_date_from"] == "2024-03-01"
    for metric_id in CATALOG:
        assert run_metric(warehouse, metric_id, f).sql  # every metric accepts the scope
    only_mortgages = run_metric(warehouse, "revenue", Filters(product_type="Mortgage")).rows
    assert {r["product_type"] for r in only_mortgages if r["product_type"]} == {"Mortgage"}


def test_evidence_records_what_ran(warehouse: DuckDBWarehouse) -> None:
    ev = run_metric(warehouse, "distributions")
    assert ev.metric_id == "distributions"
    assert "GROUPING SETS" in ev.sql
    assert ev.parameters == {"top_n": 10}
    assert ev.row_count == len(ev.rows) and not ev.truncated
    assert ev.elapsed_ms >= 0
    assert ev.warehouse.startswith("duckdb:///")
    assert set(dashboard(warehouse)) == {"kpis", "distributions"}


def test_bad_metric_requests_are_explained(warehouse: DuckDBWarehouse) -> None:
    with pytest.raises(UnknownMetric, match="the catalog has: kpis"):
        run_metric(warehouse, "nope")
    with pytest.raises(ValueError, match="has no parameter limit; allowed: top_n"):
        run_metric(warehouse, "distributions", params={"limit": 3})
    with pytest.raises(ValueError, match="must be a int; got 'many'"):
        run_metric(warehouse, "distributions", params={"top_n": "many"})
    with pytest.raises(ValueError, match="date_from .* is after date_to"):
        Filters(date_from=datetime.date(2025, 1, 1), date_to=datetime.date(2024, 1, 1))


def test_batch_shares_one_pass(warehouse: DuckDBWarehouse) -> None:
    """Cell metrics run together give what each gives alone, from one pass of the table."""
    scope = Filters(date_from=datetime.date(2024, 6, 1))
    requests = [
        ("kpis", None),
        ("distributions", {"top_n": 3}),
        ("segment_profile", None),
        ("acceptance_rates", {"min_records": 5}),
        ("revenue", None),
        ("high_affinity_unconverted", None),
        ("high_affinity_unconverted", {"min_affinity": 0.8}),  # other cells: runs alone
        ("correlations", None),
    ]
    batch = MetricBatch(warehouse, requests, scope)
    assert batch.shared == [0, 1, 2, 3, 4, 5]
    assert 0 < batch.run_cells() <= 5 * 5 * 8 * 4 * 4 * 4 * 2
    together = [batch.run(i) for i in range(len(requests))]
    warehouse.results = None  # each metric below runs alone, not from the batch's results
    for (metric_id, params), ev in zip(requests, together, strict=True):
        alone = run_metric(warehouse, metric_id, scope, params)
        assert ev.columns == alone.columns, metric_id
        assert len(ev.rows) == len(alone.rows), metric_id
        for a, b in zip(ev.rows, alone.rows, strict=True):
            assert a == pytest.approx(b), metric_id
        assert alone.parameters.items() <= ev.parameters.items(), metric_id
        if ev.shared_pass_ms is not None:
            # The evidence's statement, run on its own, gives the same rows.
            rerun = warehouse.run(ev.sql, ev.parameters)
            assert len(rerun.rows) == ev.row_count, metric_id
            for a, b in zip(as_records(rerun.columns, rerun.rows), ev.rows, strict=True):
                assert a == pytest.approx(b), metric_id
    assert [e.shared_pass_ms is not None for e in together] == [True] * 6 + [False] * 2


def test_batch_of_one_cell_metric_runs_alone(warehouse: DuckDBWarehouse) -> None:
    batch = MetricBatch(warehouse, [("kpis", None), ("monthly_trend", None)])
    assert batch.shared == [] and batch.run_cells() == 0
    assert run_metrics(warehouse, [("kpis", None)])[0].shared_pass_ms is None


def test_results_are_kept_for_the_same_metric_parameters_and_scope(
    warehouse: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only file cannot change while open: a repeated request runs no query."""
    statements: list[str] = []
    real = Warehouse.run

    def counting(wh: Warehouse, sql: object, *args: object, **kwargs: object) -> object:
        statements.append(str(sql))
        return real(wh, sql, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Warehouse, "run", counting)
    retail = Filters(segment="Retail")
    first = run_metric(warehouse, "acceptance_rates", retail)
    again = run_metric(warehouse, "acceptance_rates", retail, {"min_records": 1})  # default
    assert len(statements) == 1
    assert not first.cached and again.cached
    assert again.rows == first.rows and again.sql == first.sql
    assert again.elapsed_ms == first.elapsed_ms  # the run that computed the rows
    kept_rows = [dict(r) for r in first.rows]

    # Another scope or parameter is another result.
    run_metric(warehouse, "acceptance_rates", Filters(segment="Student"))
    run_metric(warehouse, "acceptance_rates", retail, {"min_records": 5})
    assert len(statements) == 3

    # A batch answers what is kept without a query and leaves it out of the shared pass.
    batch = MetricBatch(warehouse, [("acceptance_rates", None), ("kpis", None)], retail)
    assert batch.shared == [] and batch.run_cells() == 0
    kpis_alone = len(statements) + 1
    assert batch.run(0).cached and not batch.run(1).cached
    assert len(statements) == kpis_alone
    batch.close()
    assert warehouse.results is not None and warehouse.results.hits == 2

    # What a caller does to its evidence reaches neither the kept result nor other callers.
    first.rows[0]["segment"] = "changed"
    again.rows.clear()
    assert run_metric(warehouse, "acceptance_rates", retail).rows == kept_rows


def test_a_closed_warehouse_answers_nothing_from_before(seeded_path: Path, tmp_path: Path) -> None:
    """Closing releases the file to writers: results kept while it was open go with it."""
    path = tmp_path / "changing.duckdb"
    shutil.copy(seeded_path, path)
    wh = DuckDBWarehouse(path)
    run_metric(wh, "kpis")
    wh.close()
    assert wh.results is None
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM fpr_records WHERE customer_segment = 'Student'")
    with closing(DuckDBWarehouse(path)) as reopened:
        ev = run_metric(reopened, "kpis")
    assert not ev.cached and ev.rows[0]["records"] == len(frame(path))


def test_kept_results_are_bounded_and_can_be_switched_off(seeded_path: Path) -> None:
    with closing(DuckDBWarehouse(seeded_path, result_cache=2)) as wh:
        for segment in ("Retail", "Student", "Commercial"):
            run_metric(wh, "kpis", Filters(segment=segment))
        assert wh.results is not None and len(wh.results) == 2
        assert not run_metric(wh, "kpis", Filters(segment="Retail")).cached  # dropped first
        assert run_metric(wh, "kpis", Filters(segment="Commercial")).cached
    with closing(DuckDBWarehouse(seeded_path, result_cache=0)) as wh:
        assert wh.results is None
        run_metric(wh, "kpis")
        assert not run_metric(wh, "kpis").cached


@pytest.mark.parametrize("value", [0, 20240101, "20240101", "2024-1-1", 1.5])
def test_a_scope_date_is_a_day_written_out(value: object) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a date is written YYYY-MM-DD"):
        Filters(date_from=value)
    assert Filters(date_from="2024-01-31").date_from == datetime.date(2024, 1, 31)
