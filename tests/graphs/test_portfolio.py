"""The portfolio graph: shared evidence, four areas in parallel, an executive summary."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from graphs import steps
from graphs.areas import FOCUS_AREAS
from graphs.context import Context
from graphs.engine import ENGINE_METRICS
from graphs.portfolio import SHARED_METRICS, SHARED_STEP, SUMMARY_STEP, graph
from tests.conftest import forget_kept_results
from tools.metrics import CATALOG, MetricBatch
from tools.warehouse import Warehouse


def test_each_metric_runs_once_for_all_four_areas(
    large_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    statements: list[str] = []
    real_run, real_query = MetricBatch.run, Warehouse.run

    def counting(batch: MetricBatch, i: int) -> Any:
        calls[batch.items[i][0].id] += 1
        return real_run(batch, i)

    def query(warehouse: Warehouse, sql: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(sql))
        return real_query(warehouse, sql, *args, **kwargs)

    def engine(*args: Any, **kwargs: Any) -> Any:
        calls["engine"] += 1
        return real_engine(*args, **kwargs)

    real_engine = steps.run_engine
    monkeypatch.setattr(steps, "run_engine", engine)
    monkeypatch.setattr(MetricBatch, "run", counting)
    monkeypatch.setattr(Warehouse, "run", query)
    url = f"duckdb:///{large_path}"
    forget_kept_results(large_path)  # other tests may have run these metrics on it
    out = asyncio.run(graph.ainvoke({"question": ""}, context=Context(warehouse=url)))
    catalog = [m for m in SHARED_METRICS if m not in ENGINE_METRICS]
    assert calls == Counter({"engine": 1, **{m: 1 for m in catalog}})
    # The six cell metrics share one pass; four metrics have their own statement; the
    # engine reads the scope in six (discovery, statuses, statistics, three checks).
    cell_metrics = [m for m in catalog if CATALOG[m].cells]
    assert len(cell_metrics) == 6
    assert len(statements) == 1 + len(catalog) - len(cell_metrics) + 6
    assert out["steps"][0]["step"] == SHARED_STEP
    assert out["steps"][-1]["step"] == SUMMARY_STEP
    assert set(out["reports"]) == set(FOCUS_AREAS)
    for slug, report in out["reports"].items():
        ids = [e["id"] for e in report["evidence"]]
        assert ids == [f"E{i + 1}" for i in range(len(ids))], slug
        assert {e["metric_id"] for e in report["evidence"]} <= set(SHARED_METRICS)
        assert report["ungrounded"] == []
    opt = out["reports"]["optimization-opportunities"]
    # Optimization leads with acceptance where it lags by category (its spec's lead).
    (lead,) = [f for f in opt["findings"] if f"[{f['id']}]" in opt["headline"]]
    assert (lead["kind"], lead["measure"], lead["polarity"]) in {
        ("slice", "share_accepted", 1), ("cell", "share_accepted", 1)
    } and lead["numbers"]["gap"] < 0, lead  # fmt: skip
    summary = out["summary"]["markdown"]
    for area in FOCUS_AREAS.values():
        assert f"**{area.name}:**" in summary
    assert "## Strongest findings" in summary and "## First actions" in summary

    # Asked again on the same unchanged file, every metric comes from the kept results.
    statements.clear()
    again = asyncio.run(graph.ainvoke({"question": ""}, context=Context(warehouse=url)))
    assert statements == []
    assert again["reports"]["optimization-opportunities"]["headline"] == opt["headline"]
