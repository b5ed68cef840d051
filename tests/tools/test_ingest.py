from pathlib import Path

import duckdb
import pytest

from tests.conftest import frame
from tools import customers
from tools.ingest import LoadError, WarehouseBusy, load_file, seed_table
from tools.warehouse import DuckDBWarehouse


def _export(src: Path, dest: Path, select: str = "SELECT * FROM fpr_records") -> Path:
    con = duckdb.connect(str(src), read_only=True)
    fmt = "PARQUET" if dest.suffix == ".parquet" else "CSV, HEADER"
    con.execute(f"COPY ({select}) TO '{dest}' (FORMAT {fmt})")
    con.close()
    return dest


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target.duckdb"
    seed_table(path, rows=100, seed=3)
    return path


def _records(path: Path) -> list:
    return frame(path, "SELECT * FROM fpr_records ORDER BY record_id").to_numpy().tolist()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_good_file_replaces_the_table(
    tmp_path: Path, seeded_path: Path, target: Path, suffix: str
) -> None:
    source = _export(seeded_path, tmp_path / f"good{suffix}")
    result = load_file(target, source)
    assert result.rows == 750
    assert _records(target) == _records(seeded_path)


def test_bad_file_lists_every_problem_and_keeps_the_old_table(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    before = _records(target)
    bad = _export(
        seeded_path,
        tmp_path / "bad.csv",
        # No customer_email, a text balance in row 1, a duplicated id, an extra column.
        """SELECT * EXCLUDE (customer_email, account_balance, record_id),
             CASE WHEN row_number() OVER () = 1 THEN 'lots' ELSE account_balance::VARCHAR END
               AS account_balance,
             CASE WHEN row_number() OVER () <= 2 THEN 'dup-1' ELSE record_id END AS record_id,
             1 AS surprise
           FROM fpr_records""",
    )
    with pytest.raises(LoadError) as info:
        load_file(target, bad)
    problems = "\n".join(info.value.problems)
    assert "missing columns: customer_email" in problems
    assert "account_balance: 1 value(s) that are not double, e.g. 'lots'" in problems
    assert "record_id: 1 duplicated id(s), e.g. 'dup-1' (2x)" in problems
    assert "unexpected columns (not in the fpr_records schema): surprise" in problems
    assert len(info.value.problems) == 4
    assert "existing fpr_records table is unchanged" in str(info.value)
    assert _records(target) == before


def test_empty_required_values_and_dates_are_checked(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    bad = _export(
        seeded_path,
        tmp_path / "bad.csv",
        """SELECT * REPLACE (
             CASE WHEN row_number() OVER () = 3 THEN NULL ELSE customer_id END AS customer_id,
             CASE WHEN row_number() OVER () = 5 THEN 'soon'
                  ELSE product_recommendation_date::VARCHAR END AS product_recommendation_date)
           FROM fpr_records""",
    )
    with pytest.raises(LoadError) as info:
        load_file(target, bad)
    assert info.value.problems == [
        "column customer_id: 1 empty value(s), first at data row 3",
        "column product_recommendation_date: 1 value(s) that are not date, e.g. 'soon' "
        "at data row 5",
    ]


def test_unreadable_missing_and_unsupported_files(tmp_path: Path, target: Path) -> None:
    with pytest.raises(LoadError, match="no such file"):
        load_file(target, tmp_path / "absent.csv")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(LoadError, match="unsupported file type '.xlsx'"):
        load_file(target, odd)
    empty = tmp_path / "empty.csv"
    empty.write_text("record_id,customer_id\n")
    with pytest.raises(LoadError, match="the file has no data rows"):
        load_file(target, empty)


def test_system_columns_are_kept_and_deleted_rows_hidden(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    source = _export(
        seeded_path,
        tmp_path / "synced.parquet",
        """SELECT *, row_number() OVER () <= 50 AS _fivetran_deleted,
             TIMESTAMP '2025-06-01 00:00:00' AS _fivetran_synced FROM fpr_records""",
    )
    assert load_file(target, source).rows == 750
    wh = DuckDBWarehouse(target)
    try:
        assert wh.has_deleted_flag()
        count = wh.run("SELECT count(*) AS n FROM fpr_records")
        assert count.rows == [(700,)]
        star = wh.run("SELECT * FROM fpr_records LIMIT 1")
        assert "_fivetran_deleted" not in star.columns
        assert "_fivetran_deleted" in star.sql
    finally:
        wh.close()


def test_customer_snapshot_is_rebuilt_with_the_records(
    tmp_path: Path, seeded_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def current() -> bool:
        wh = DuckDBWarehouse(target)
        try:
            return wh.customer_snapshot()
        finally:
            wh.close()

    assert current()
    source = _export(
        seeded_path,
        tmp_path / "synced.parquet",
        "SELECT *, row_number() OVER () <= 50 AS _fivetran_deleted FROM fpr_records",
    )
    load_file(target, source)
    assert current()
    snapshot = frame(target, "SELECT * FROM fpr_customers")
    live = frame(target, "SELECT * FROM fpr_records WHERE NOT _fivetran_deleted")
    assert snapshot.records.sum() == len(live) == 700  # rows deleted at the source left out
    assert sorted(snapshot.customer_id) == sorted(live.customer_id.unique())
    latest = live.sort_values("last_updated_epoch").groupby("customer_id").last()
    row = snapshot.set_index("customer_id").loc[latest.index[0]]
    assert row.account_balance == latest.iloc[0].account_balance
    assert row.customer_segment == latest.iloc[0].customer_segment

    # A failure while the snapshot is rebuilt leaves records and snapshot as they were.
    real = customers.refresh

    def interrupted(con: duckdb.DuckDBPyConnection, source: str) -> int:
        real(con, source)
        raise KeyboardInterrupt

    monkeypatch.setattr(customers, "refresh", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seed_table(target, rows=40)
    assert len(frame(target)) == 750
    assert current()


def test_writer_refuses_while_another_process_holds_the_file(target: Path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,sys; c=duckdb.connect({str(target)!r}); print('open', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(WarehouseBusy, match="Another process"):
            seed_table(target, rows=10)
    finally:
        holder.communicate("")
    assert frame(target, "SELECT count(*) AS n FROM fpr_records").n[0] == 100


def _with_values(replace: str) -> str:
    """A SELECT of fpr_records with some values replaced; `rn` is the data row (from 1)."""
    return (
        f"SELECT * EXCLUDE (rn) REPLACE ({replace}) "
        "FROM (SELECT *, row_number() OVER () AS rn FROM fpr_records)"
    )


def test_non_finite_and_out_of_range_numbers_are_rejected(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    before = _records(target)
    bad = _export(
        seeded_path,
        tmp_path / "bad.csv",
        _with_values(
            """CASE WHEN rn = 4 THEN 'NaN' ELSE account_balance::VARCHAR END AS account_balance,
            CASE WHEN rn = 6 THEN 'inf' ELSE customer_transaction_value::VARCHAR END
              AS customer_transaction_value,
            CASE WHEN rn = 5 THEN '-3' WHEN rn = 7 THEN '2.5'
              ELSE customer_transaction_count::VARCHAR END AS customer_transaction_count,
            CASE WHEN rn = 8 THEN '-10.5' ELSE product_sales_amount::VARCHAR END
              AS product_sales_amount,
            CASE WHEN rn IN (2, 9) THEN '1.7' ELSE recommendation_score::VARCHAR END
              AS recommendation_score,
            CASE WHEN rn = 3 THEN '-0.1' ELSE customer_product_affinity::VARCHAR END
              AS customer_product_affinity,
            CASE WHEN rn = 11 THEN '1.01' ELSE customer_satisfaction_score::VARCHAR END
              AS customer_satisfaction_score,
            CASE WHEN rn = 10 THEN '-Infinity' ELSE customer_churn_probability::VARCHAR END
              AS customer_churn_probability,
            CASE WHEN rn = 12 THEN '-1' ELSE last_updated_epoch::VARCHAR END
              AS last_updated_epoch"""
        ),
    )
    with pytest.raises(LoadError) as info:
        load_file(target, bad)
    assert info.value.problems == [
        "column account_balance: 1 value(s) that are not finite numbers (NaN or infinity), "
        "e.g. 'NaN' at data row 4",
        "column customer_transaction_value: 1 value(s) that are not finite numbers "
        "(NaN or infinity), e.g. 'inf' at data row 6",
        "column customer_transaction_count: 1 value(s) that are not bigint, e.g. '2.5' "
        "at data row 7",
        "column customer_transaction_count: 1 value(s) out of range (must be 0 or more), "
        "e.g. '-3' at data row 5",
        "column product_sales_amount: 1 value(s) out of range (must be 0 or more), "
        "e.g. '-10.5' at data row 8",
        "column recommendation_score: 2 value(s) out of range (must be 0-1), e.g. '1.7' "
        "at data row 2",
        "column customer_product_affinity: 1 value(s) out of range (must be 0-1), "
        "e.g. '-0.1' at data row 3",
        "column customer_satisfaction_score: 1 value(s) out of range (must be 0-1), "
        "e.g. '1.01' at data row 11",
        "column customer_churn_probability: 1 value(s) that are not finite numbers "
        "(NaN or infinity), e.g. '-Infinity' at data row 10",
        "column last_updated_epoch: 1 value(s) out of range (must be 0 or more), "
        "e.g. '-1' at data row 12",
    ]
    assert "existing fpr_records table is unchanged" in str(info.value)
    assert _records(target) == before


def test_a_parquet_nan_is_rejected(tmp_path: Path, seeded_path: Path, target: Path) -> None:
    bad = _export(
        seeded_path,
        tmp_path / "bad.parquet",
        _with_values(
            "CASE WHEN rn = 2 THEN 'NaN'::DOUBLE ELSE customer_churn_probability END "
            "AS customer_churn_probability"
        ),
    )
    with pytest.raises(LoadError) as info:
        load_file(target, bad)
    assert info.value.problems == [
        "column customer_churn_probability: 1 value(s) that are not finite numbers "
        "(NaN or infinity), e.g. 'nan' at data row 2"
    ]


def test_values_at_the_ends_of_their_ranges_load(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    edge = _export(
        seeded_path,
        tmp_path / "edge.csv",
        _with_values(
            """CASE WHEN rn = 1 THEN -2500.75 ELSE account_balance END AS account_balance,
            CASE WHEN rn = 1 THEN 0 ELSE customer_transaction_count END
              AS customer_transaction_count,
            CASE WHEN rn = 1 THEN 0.0 WHEN rn = 2 THEN 1.0 ELSE recommendation_score END
              AS recommendation_score,
            CASE WHEN rn = 1 THEN 1.0 ELSE customer_churn_probability END
              AS customer_churn_probability"""
        ),
    )
    assert load_file(target, edge).rows == 750
    overdrawn = frame(target, "SELECT min(account_balance) AS low FROM fpr_records")
    assert overdrawn.low[0] == -2500.75  # an overdrawn account is a real balance


def test_bad_fivetran_columns_are_listed_and_keep_the_old_table(
    tmp_path: Path, seeded_path: Path, target: Path
) -> None:
    before = _records(target)
    bad = _export(
        seeded_path,
        tmp_path / "synced.csv",
        """SELECT *,
             CASE WHEN row_number() OVER () = 3 THEN 'yesterday'
                  WHEN row_number() OVER () = 4 THEN NULL
                  ELSE '2025-06-01 10:00:00' END AS _fivetran_synced,
             CASE WHEN row_number() OVER () IN (2, 7) THEN 'maybe'
                  WHEN row_number() OVER () = 5 THEN NULL
                  ELSE 'false' END AS _fivetran_deleted
           FROM fpr_records""",
    )
    with pytest.raises(LoadError) as info:
        load_file(target, bad)
    assert info.value.problems == [
        "column _fivetran_synced: 1 value(s) that are not timestamp, e.g. 'yesterday' "
        "at data row 3",
        "column _fivetran_deleted: 2 value(s) that are not boolean, e.g. 'maybe' at data row 2",
    ]
    assert _records(target) == before
