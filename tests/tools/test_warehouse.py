"""Rendering: a query text renders once per warehouse, under a bound, from any thread."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tools.warehouse as warehouse_module
from tools.warehouse import DuckDBWarehouse


@pytest.fixture
def wh(seeded_path: Path, tmp_path: Path) -> Iterator[DuckDBWarehouse]:
    copy = tmp_path / "fpr.duckdb"
    shutil.copy(seeded_path, copy)
    opened = DuckDBWarehouse(copy)
    yield opened
    opened.close()


def test_a_query_text_renders_once_and_the_cache_is_bounded(
    wh: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse_module, "RENDER_CACHE", 3)
    first = wh.render("SELECT count(*) AS n FROM fpr_records")
    assert wh.render("SELECT count(*) AS n FROM fpr_records") is first  # kept, not rebuilt
    texts = [f"SELECT {i} AS x FROM fpr_records" for i in range(5)]
    for text in texts:
        wh.render(text)
    assert list(wh._rendered) == texts[-3:]  # the oldest went first
    assert wh.run("SELECT count(*) AS n FROM fpr_records").rows == [(750,)]


def test_rendering_from_many_threads(wh: DuckDBWarehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warehouse_module, "RENDER_CACHE", 8)
    texts = [f"SELECT {i} AS x FROM fpr_records WHERE record_id > '{i}'" for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        rendered = list(pool.map(wh.render, texts))
    assert all(f"SELECT {i} AS x" in r for i, r in enumerate(rendered))
    assert len(wh._rendered) <= 8


def test_the_result_cache_setting_reaches_the_warehouse(
    seeded_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"duckdb:///{seeded_path}"
    monkeypatch.setenv("FINMATCH_RESULT_CACHE", "0")
    off = warehouse_module.open_warehouse(url)
    try:
        assert off.results is None
    finally:
        off.close()
    monkeypatch.setenv("FINMATCH_RESULT_CACHE", "1")
    one = warehouse_module.open_warehouse(url)
    try:
        assert one.results is not None
        one.results.put("a", 1)
        one.results.put("b", 2)
        assert len(one.results) == 1 and one.results.get("b") == 2
    finally:
        one.close()


def test_what_a_query_spills_to_disk_is_bounded(seeded_path: Path) -> None:
    """Was DuckDB's default, 90% of the free disk: one query could fill it."""
    wh = DuckDBWarehouse(seeded_path, memory_limit="100MB", result_cache=0)
    try:
        (told,) = wh._con.execute("SELECT current_setting('max_temp_directory_size')").fetchone()
    finally:
        wh.close()
    assert told == "381.4 MiB"  # 4 x 100 MB (DuckDB's MB is 10^6 bytes)
