from pathlib import Path

import numpy as np
import pytest

from tests.conftest import frame
from tools import generator
from tools.ingest import seed_table
from tools.schema import (
    COLUMN_NAMES,
    LIFECYCLE_STAGES,
    PRODUCT_TYPES,
    RECOMMENDATION_STATUSES,
    SEGMENTS,
)


def _digest(path: Path) -> list:
    return frame(path, "SELECT * FROM fpr_records ORDER BY record_id").to_numpy().tolist()


def test_same_seed_same_table_and_other_seed_differs(tmp_path: Path, seeded_path: Path) -> None:
    again = tmp_path / "again.duckdb"
    seed_table(again)
    assert _digest(again) == _digest(seeded_path)
    other = tmp_path / "other.duckdb"
    seed_table(other, seed=43)
    assert _digest(other) != _digest(seeded_path)


def test_shape_vocabularies_and_keys(seeded_path: Path) -> None:
    df = frame(seeded_path)
    assert list(df.columns) == list(COLUMN_NAMES)
    assert len(df) == 750
    assert df.record_id.is_unique
    assert set(df.customer_segment) == set(SEGMENTS)
    assert set(df.customer_lifecycle_stage) == set(LIFECYCLE_STAGES)
    assert set(df.product_recommendation_status) == set(RECOMMENDATION_STATUSES)
    assert set(df.product_type) <= set(PRODUCT_TYPES)
    for col in (
        "recommendation_score",
        "customer_product_affinity",
        "customer_satisfaction_score",
        "customer_churn_probability",
    ):
        assert df[col].between(0, 1).all(), col
    # A customer has one profile across all their records.
    per_customer = df.groupby("customer_id")[["customer_segment", "account_balance"]].nunique()
    assert (per_customer == 1).all().all()
    # Sales happen exactly for accepted recommendations.
    accepted = df.product_recommendation_status == "Accepted"
    assert (df.product_sales_amount[accepted] > 0).all()
    assert (df.product_sales_amount[~accepted] == 0).all()
    assert df.product_sales_date[accepted].notna().all()
    assert df.product_sales_date[~accepted].isna().all()
    assert (df.product_sales_date[accepted] > df.product_recommendation_date[accepted]).all()


def test_customer_ids_stay_distinct_past_a_million_customers() -> None:
    sql = generator.select_sql(10, 1)
    assert "printf('CUST_%06d', c)" in sql  # lpad would cut 7-digit ids to 6


def _acceptance_by_affinity(path: Path) -> list[float]:
    df = frame(path)
    bands = np.digitize(df.customer_product_affinity, [0.3, 0.5, 0.7])
    accepted = df.product_recommendation_status == "Accepted"
    return [accepted[bands == b].mean() for b in range(4)]


def test_planted_relationships_hold(large_path: Path) -> None:
    df = frame(large_path)
    rates = _acceptance_by_affinity(large_path)
    assert rates == sorted(rates) and rates[3] - rates[0] > 0.3
    assert df.customer_satisfaction_score.corr(df.customer_churn_probability) < -0.6
    medians = df.groupby("customer_segment").account_balance.median()
    assert list(medians.sort_values().index) == [
        "Student",
        "Retail",
        "Small Business",
        "Commercial",
        "Wealth Management",
    ]
    assert df.recommendation_score.corr(df.customer_product_affinity) > 0.5
    churn = df.groupby("customer_lifecycle_stage").customer_churn_probability.mean()
    assert churn.idxmax() == "Inactive"
    accepted = df.product_recommendation_status == "Accepted"
    lag = (df.customer_segment == "Small Business") & (df.product_type == "Personal Loan")
    assert accepted[lag].mean() < accepted[~lag].mean() - 0.15


def test_no_relationship_when_none_planted(null_path: Path) -> None:
    df = frame(null_path)
    rates = _acceptance_by_affinity(null_path)
    assert max(rates) - min(rates) < 0.05
    numeric = df.select_dtypes("number").drop(columns=["last_updated_epoch"])
    corr = numeric.corr().to_numpy()
    off_diagonal = corr[~np.eye(len(corr), dtype=bool)]
    # Transaction value is count x ticket size (which follows the balance draw) by
    # construction; nothing else may move together.
    strong = {
        (a, b)
        for a in numeric.columns
        for b in numeric.columns
        if a < b and abs(numeric[a].corr(numeric[b])) > 0.1
    }
    assert strong <= {
        ("customer_transaction_count", "customer_transaction_value"),
        ("account_balance", "customer_transaction_value"),
    }, strong
    assert np.isfinite(off_diagonal).all()
    medians = df.groupby("customer_segment").account_balance.median()
    assert medians.max() / medians.min() < 1.2
    accepted = df.product_recommendation_status == "Accepted"
    lag = (df.customer_segment == "Small Business") & (df.product_type == "Personal Loan")
    assert abs(accepted[lag].mean() - accepted[~lag].mean()) < 0.08


@pytest.mark.parametrize(
    ("rows", "seed", "message"),
    [
        (0, 1, "--rows must be between 1"),
        (10, -1, "--seed must be between 0"),
        (10, 2**40, "--seed must be between 0"),
    ],
)
def test_bad_rows_or_seed_are_refused(rows: int, seed: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generator.setup_sql(rows, seed)
