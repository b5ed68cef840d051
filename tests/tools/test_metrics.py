"""Every catalog metric checked against an independent pandas computation."""

import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import frame
from tools.metrics import CATALOG, Filters, UnknownMetric, dashboard, run_metric
from tools.schema import NUMERIC_COLUMNS
from tools.warehouse import DuckDBWarehouse


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
        assert r["median_account_balance"] == pytest.approx(g.account_balance.median())
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
    expected = df[list(NUMERIC_COLUMNS)].astype(float).corr()
    assert len(rows) == len(NUMERIC_COLUMNS) * (len(NUMERIC_COLUMNS) - 1) // 2
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


def test_value_at_risk(warehouse: DuckDBWarehouse, df: pd.DataFrame) -> None:
    rows = run_metric(warehouse, "value_at_risk", params={"high_risk": 0.5}).rows
    latest = df.sort_values("last_updated_epoch").groupby("customer_id").last()
    sales = df.groupby("customer_id").product_sales_amount.sum()
    c = latest.assign(sales=sales)
    c["bar"] = c.account_balance * c.customer_churn_probability
    c["sar"] = c.sales * c.customer_churn_probability
    total = next(r for r in rows if r["breakdown"] == "total")
    assert total["customers"] == len(c)
    assert total["balance_at_risk"] == pytest.approx(c.bar.sum())
    assert total["sales_at_risk"] == pytest.approx(c.sar.sum())
    assert total["high_risk_customers"] == (c.customer_churn_probability >= 0.5).sum()
    for seg, g in c.groupby("customer_segment"):
        r = next(r for r in rows if r["breakdown"] == "segment" and r["customer_segment"] == seg)
        assert r["customers"] == len(g)
        assert r["total_balance"] == pytest.approx(g.account_balance.sum())
        assert r["balance_at_risk"] == pytest.approx(g.bar.sum())
    for stage, g in c.groupby("customer_lifecycle_stage"):
        r = next(
            r
            for r in rows
            if r["breakdown"] == "lifecycle_stage" and r["customer_lifecycle_stage"] == stage
        )
        assert r["avg_churn_probability"] == pytest.approx(g.customer_churn_probability.mean())


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
