"""The insight engine on tables whose truth is known by construction and measured by SQL.

A null table is the seeded table with every column shuffled on its own (any relation
between columns is gone, each column's values stay); a planted one is a null table with
one effect written into it by SQL. What the engine must find is then read off the table
with SQL, never from the engine.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from evals.planted import shuffle
from graphs.insights import MIN_GROUP, Insight, find
from tools.scans import OTHER, TOP_VALUES, scan
from tools.schema import TABLE
from tools.warehouse import DuckDBWarehouse


def shuffled(seeded: Path, to: Path, salt: int) -> None:
    """Copy `seeded` with each column of the table in an order of its own."""
    shutil.copy(seeded, to)
    con = duckdb.connect(str(to))
    try:
        shuffle(con, salt)
    finally:
        con.close()


def sql(path: Path, query: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def insights_of(path: Path) -> list[Insight]:
    wh = DuckDBWarehouse(path, result_cache=0)
    try:
        return find(scan(wh))
    finally:
        wh.close()


@pytest.fixture
def generated(large_path: Path, tmp_path: Path) -> Path:
    """A copy of the generated table: others in this process hold the shared one open."""
    path = tmp_path / "generated.duckdb"
    shutil.copy(large_path, path)
    return path


@pytest.fixture
def null_table(large_path: Path, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "null.duckdb"
    shuffled(large_path, path, salt=1)
    yield path


@pytest.mark.parametrize("salt", [1, 2, 3, 4, 5])
def test_a_table_whose_columns_are_independent_yields_nothing(
    large_path: Path, tmp_path: Path, salt: int
) -> None:
    path = tmp_path / "null.duckdb"
    shuffled(large_path, path, salt)
    assert insights_of(path) == []


def test_a_shift_in_a_column_no_detector_reads_is_found_and_named(null_table: Path) -> None:
    (terms,) = sql(
        null_table,
        f"SELECT product_terms FROM {TABLE} GROUP BY 1 HAVING count(*) > 400 ORDER BY 1 LIMIT 1",
    )[0]
    con = duckdb.connect(str(null_table))
    con.execute(
        f"UPDATE {TABLE} SET customer_churn_probability = "
        "least(1.0, customer_churn_probability + 0.2) WHERE product_terms = ?",
        [terms],
    )
    con.close()
    ((inside, rest),) = sql(
        null_table,
        "SELECT avg(customer_churn_probability) FILTER (WHERE product_terms = '{0}'), "
        "avg(customer_churn_probability) FILTER (WHERE product_terms <> '{0}') "
        f"FROM {TABLE}".format(terms.replace("'", "''")),
    )
    found = insights_of(null_table)
    churn = [i for i in found if i.measure == "mean_customer_churn_probability"]
    assert churn, found
    top = churn[0]
    assert (top.dimension, top.value) == ("product_terms", terms)
    assert top.value_in == pytest.approx(inside, abs=1e-9)
    assert top.value_rest == pytest.approx(rest, abs=1e-9)
    assert top.q <= 0.01 and top.n >= MIN_GROUP
    # The balance the higher churn puts at risk, from the same table.
    ((balance,),) = sql(
        null_table,
        f"SELECT sum(account_balance) FROM {TABLE} WHERE product_terms = '{{}}'".format(
            terms.replace("'", "''")
        ),
    )
    assert top.money == pytest.approx((inside - rest) * balance, rel=1e-9)
    # Nothing else is claimed: the other slices of the table stay independent.
    assert {(i.dimension, i.value) for i in found} <= {("product_terms", terms)}


def test_a_group_that_lags_on_acceptance_is_priced_at_its_own_sale(null_table: Path) -> None:
    con = duckdb.connect(str(null_table))
    # Half of the Students' accepted recommendations declined, their sales with them.
    con.execute(
        f"UPDATE {TABLE} SET product_recommendation_status = 'Declined', "
        "product_sales_amount = 0, product_sales_date = NULL "
        "WHERE customer_segment = 'Student' AND product_recommendation_status = 'Accepted' "
        "AND hash(record_id) % 2 = 0"
    )
    con.close()
    ((n, rate, rest_rate, mean_sale),) = sql(
        null_table,
        "SELECT count(*) FILTER (WHERE customer_segment = 'Student'), "
        "avg(CASE WHEN product_recommendation_status = 'Accepted' THEN 1 ELSE 0 END) "
        "FILTER (WHERE customer_segment = 'Student'), "
        "avg(CASE WHEN product_recommendation_status = 'Accepted' THEN 1 ELSE 0 END) "
        "FILTER (WHERE customer_segment <> 'Student'), "
        "avg(product_sales_amount) FILTER (WHERE customer_segment = 'Student' "
        f"AND product_recommendation_status = 'Accepted') FROM {TABLE}",
    )
    found = insights_of(null_table)
    lag = next(i for i in found if i.measure == "share_accepted")
    assert (lag.dimension, lag.value) == ("customer_segment", "Student")
    assert lag.value_in == pytest.approx(rate) and lag.value_rest == pytest.approx(rest_rate)
    assert lag.money == pytest.approx((rest_rate - rate) * n * mean_sale, rel=1e-9)


def test_keys_and_text_are_no_dimensions_and_many_values_end_in_other(
    generated: Path,
) -> None:
    wh = DuckDBWarehouse(generated, result_cache=0)
    try:
        found = scan(wh)
    finally:
        wh.close()
    names = {d.name for d in found.dimensions}
    assert {"record_id", "customer_id", "customer_name", "customer_email"} <= set(found.excluded)
    assert not names & set(found.excluded)
    assert {"customer_segment", "product_type", "month"} <= names
    ((distinct,),) = sql(generated, f"SELECT count(DISTINCT product_name) FROM {TABLE}")
    names_kept = [s for s in found.slices if s.dimension.name == "product_name"]
    if distinct > TOP_VALUES:
        assert len(names_kept) == TOP_VALUES + 1 and names_kept[-1].value == OTHER
    for dim in found.dimensions:  # every slicing covers the scope exactly
        parts = [s for s in found.slices if s.dimension is dim]
        assert sum(s.records for s in parts) == found.records, dim.name
        sales = sum(s.stats["mean_sale"].total for s in parts)
        assert sales == pytest.approx(found.totals["mean_sale"].total, rel=1e-9)


def test_columns_that_name_the_same_thing_are_told_once(generated: Path) -> None:
    ((ids, names, pairs),) = sql(
        generated,
        "SELECT count(DISTINCT product_id), count(DISTINCT product_name), "
        f"count(DISTINCT (product_id, product_name)) FROM {TABLE}",
    )
    assert ids == names == pairs  # one name an id in this table: the same slices
    found = insights_of(generated)
    assert found and not [i for i in found if "product_id" in (i.dimension, i.second_dimension)]
    by_name = [i for i in found if i.kind == "slice" and i.dimension == "product_name"]
    assert by_name and all("product_id" in i.also for i in by_name)


def test_data_problems_are_counted_before_any_total(large_path: Path, tmp_path: Path) -> None:
    from tools.scans import quality

    path = tmp_path / "defects.duckdb"
    shutil.copy(large_path, path)
    con = duckdb.connect(str(path))
    accepted = f"FROM {TABLE} WHERE product_recommendation_status = 'Accepted'"
    declined = f"FROM {TABLE} WHERE product_recommendation_status = 'Declined'"
    con.execute(
        f"UPDATE {TABLE} SET product_sales_amount = 0 WHERE record_id IN "
        f"(SELECT record_id {accepted} ORDER BY record_id LIMIT 7)"
    )
    con.execute(
        f"UPDATE {TABLE} SET product_sales_amount = 99 WHERE record_id IN "
        f"(SELECT record_id {declined} ORDER BY record_id LIMIT 5)"
    )
    con.execute(
        f"UPDATE {TABLE} SET product_sales_date = product_recommendation_date - 3 "
        f"WHERE record_id IN (SELECT record_id {accepted} AND product_sales_amount > 0 "
        "ORDER BY record_id DESC LIMIT 3)"
    )
    ((customer,),) = con.execute(
        f"SELECT customer_id FROM {TABLE} GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 1"
    ).fetchall()
    con.execute(
        f"UPDATE {TABLE} SET customer_segment = 'Other ' || record_id WHERE customer_id = ?",
        [customer],
    )
    con.execute(
        f"UPDATE {TABLE} SET product_sales_amount = product_sales_amount * 1000 WHERE record_id "
        f"IN (SELECT record_id {accepted} AND product_type = 'Credit Card' "
        "AND product_sales_amount > 0 ORDER BY record_id LIMIT 4)"
    )
    con.execute(
        f"UPDATE {TABLE} SET account_balance = CAST('NaN' AS DOUBLE) WHERE record_id IN "
        f"(SELECT record_id FROM {TABLE} ORDER BY record_id LIMIT 2)"
    )
    con.execute(
        f"UPDATE {TABLE} SET customer_churn_probability = 1.5 WHERE record_id IN "
        f"(SELECT record_id FROM {TABLE} ORDER BY record_id DESC LIMIT 3)"
    )
    con.close()
    truth = sql(
        path,
        "SELECT count(*) FILTER (WHERE product_recommendation_status = 'Accepted' "
        "AND coalesce(product_sales_amount, 0) <= 0), "
        "count(*) FILTER (WHERE product_recommendation_status <> 'Accepted' "
        "AND product_sales_amount > 0), "
        "count(*) FILTER (WHERE product_sales_date < product_recommendation_date), "
        "sum(product_sales_amount) FILTER (WHERE product_recommendation_status = 'Accepted') "
        f"FROM {TABLE}",
    )[0]
    ((planted,),) = sql(
        path,
        f"SELECT sum(product_sales_amount) FROM (SELECT product_sales_amount {accepted} "
        "AND product_type = 'Credit Card' ORDER BY product_sales_amount DESC LIMIT 4)",
    )
    wh = DuckDBWarehouse(path, result_cache=0)
    try:
        found = quality(wh)
    finally:
        wh.close()
    assert truth[:3] == (7, 5, 3)
    assert found.accepted_without_sale == 7
    assert found.sale_without_acceptance == 5
    assert found.sale_before_recommendation == 3
    assert found.conflicting_customers == 1
    assert found.sales_total == pytest.approx(truth[3])
    count, amount = found.outliers_by_type["Credit Card"]
    assert count >= 4 and amount >= planted * (1 - 1e-9)
    assert found.out_of_range == {"account_balance": 2, "customer_churn_probability": 3}


def test_a_break_in_a_monthly_series_is_found_at_its_month(null_table: Path) -> None:
    months = [m for (m,) in sql(
        null_table,
        f"SELECT DISTINCT strftime(product_recommendation_date, '%Y-%m') FROM {TABLE} ORDER BY 1",
    )]  # fmt: skip
    assert len(months) >= 8
    start = months[len(months) // 2]
    con = duckdb.connect(str(null_table))
    con.execute(
        f"UPDATE {TABLE} SET customer_satisfaction_score = customer_satisfaction_score * 0.7 "
        "WHERE strftime(product_recommendation_date, '%Y-%m') >= ?",
        [start],
    )
    con.close()
    ((before, after),) = sql(
        null_table,
        "SELECT avg(customer_satisfaction_score) FILTER (WHERE "
        f"strftime(product_recommendation_date, '%Y-%m') < '{start}'), "
        "avg(customer_satisfaction_score) FILTER (WHERE "
        f"strftime(product_recommendation_date, '%Y-%m') >= '{start}') FROM {TABLE}",
    )
    found = insights_of(null_table)
    (shift,) = [i for i in found if i.kind == "shift"]
    assert (shift.measure, shift.value) == ("mean_customer_satisfaction_score", start)
    assert shift.value_rest == pytest.approx(before) and shift.value_in == pytest.approx(after)
    assert all(i.measure == shift.measure for i in found), found


def _plant_churn(path: Path, where: str, params: list[str]) -> tuple[float, float]:
    con = duckdb.connect(str(path))
    con.execute(
        f"UPDATE {TABLE} SET customer_churn_probability = "
        f"least(1.0, customer_churn_probability + 0.25) WHERE {where}",
        params,
    )
    ((inside, rest),) = con.execute(
        f"SELECT avg(customer_churn_probability) FILTER (WHERE {where}), "
        f"avg(customer_churn_probability) FILTER (WHERE NOT ({where})) FROM {TABLE}",
        params * 2,
    ).fetchall()
    con.close()
    return inside, rest


def test_an_effect_of_one_product_is_named_as_the_product_not_its_cells(
    null_table: Path,
) -> None:
    inside, rest = _plant_churn(null_table, "product_type = ?", ["Mortgage"])
    found = [i for i in insights_of(null_table) if i.measure == "mean_customer_churn_probability"]
    assert [(i.kind, i.dimension, i.value) for i in found] == [
        ("slice", "product_type", "Mortgage")
    ], found
    assert found[0].value_in == pytest.approx(inside) and found[0].value_rest == pytest.approx(rest)


def test_an_effect_of_one_cell_is_named_as_the_cell_not_its_margins(null_table: Path) -> None:
    where = "customer_segment = ? AND product_type = ?"
    inside, _ = _plant_churn(null_table, where, ["Student", "Mortgage"])
    found = [i for i in insights_of(null_table) if i.measure == "mean_customer_churn_probability"]
    assert len(found) == 1, found
    (cell,) = found
    named = {(cell.dimension, cell.value), (cell.second_dimension, cell.second_value)}
    assert cell.kind == "cell"
    assert named == {("customer_segment", "Student"), ("product_type", "Mortgage")}
    assert cell.value_in == pytest.approx(inside)


def test_statuses_that_read_alike_are_measured_apart() -> None:
    from tools.scans import measures_for

    names = [m.name for m in measures_for(["In Progress", "in-progress", "Accepted"])]
    assert names[:3] == ["share_in_progress", "share_in_progress_1", "share_accepted"]
    assert len(set(names)) == len(names)


def test_values_that_are_not_finite_are_counted_not_averaged(generated: Path) -> None:
    """Was ValueError from the FDR control: one NaN balance made every p value NaN."""
    con = duckdb.connect(str(generated))
    con.execute(
        f"UPDATE {TABLE} SET account_balance = CAST('NaN' AS DOUBLE) WHERE record_id IN "
        f"(SELECT record_id FROM {TABLE} ORDER BY record_id LIMIT 3)"
    )
    con.execute(
        f"UPDATE {TABLE} SET customer_transaction_value = CAST('Infinity' AS DOUBLE) "
        f"WHERE record_id IN (SELECT record_id FROM {TABLE} ORDER BY record_id DESC LIMIT 1)"
    )
    con.close()
    ((balance,),) = sql(
        generated, f"SELECT avg(account_balance) FILTER (WHERE NOT isnan(account_balance)) "
        f"FROM {TABLE}",
    )  # fmt: skip
    wh = DuckDBWarehouse(generated, result_cache=0)
    try:
        found = scan(wh)
        assert find(found)
    finally:
        wh.close()
    assert found.totals["mean_account_balance"].mean == pytest.approx(balance)
    assert found.totals["mean_account_balance"].n == found.records - 3


def test_an_effect_of_one_value_is_not_told_as_a_cell_of_an_associated_column(
    null_table: Path,
) -> None:
    """Was a cell: where most "Inactive" customers use the product "Occasional"ly, their
    margins double-count one effect, so margins alone predicted far more churn than the
    cell holds; a joint fit of the two columns' effects predicts it."""
    con = duckdb.connect(str(null_table))
    con.execute(
        f"UPDATE {TABLE} SET customer_product_usage = 'Occasional' WHERE "
        "customer_lifecycle_stage = 'Inactive' AND hash(record_id) % 10 < 8"
    )
    con.close()
    inside, rest = _plant_churn(null_table, "customer_lifecycle_stage = ?", ["Inactive"])
    found = [i for i in insights_of(null_table) if i.measure == "mean_customer_churn_probability"]
    told = {(i.kind, i.dimension, i.value) for i in found}
    assert ("slice", "customer_lifecycle_stage", "Inactive") in told, found
    assert not [i for i in found if i.kind == "cell"], found
