"""The benches' stand-in model answers the prompts the analysts really send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from graphs.context import Context
from service.runs import run_focus


def test_the_delayed_model_writes_a_report_the_analyst_accepts(
    seeded_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was KeyError 'focus_area': the prompt keeps the request apart from the data."""
    monkeypatch.setenv("FINMATCH_BENCH_DELAY_S", "0")
    context = Context(
        warehouse=f"duckdb:///{seeded_path}", model="import:bench.delayed_model:delayed"
    )
    result = asyncio.run(
        run_focus(
            "financial-impact",
            context,
            checkpoints=f"sqlite:///{tmp_path / 'ck.sqlite'}",
            tracing=False,
        )
    )
    assert result.status == "succeeded", result.error
    report = result.output["report"]
    assert report["headline"] == "Financial Impact: what the evidence shows"
    assert report["model"] == "import:bench.delayed_model:delayed"
