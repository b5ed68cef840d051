"""The insight engine against the planted scenarios (evals/planted.py).

Each scenario's truth is read off its table by SQL after the pattern was written in;
the thresholds are the issue's: recall at least 0.95, nothing invented on a null base,
nothing at all on a table with nothing planted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.planted import SCENARIOS, Score, build, score_insights


@pytest.fixture(scope="module")
def scores(large_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Score]:
    where = tmp_path_factory.mktemp("planted")
    out = []
    for scenario in SCENARIOS:
        path = where / f"{scenario.name}.duckdb"
        out.append(score_insights(scenario, build(scenario, large_path, path), path))
    return out


def test_the_suite_plants_fifteen_patterns_and_five_tables_with_none() -> None:
    planted = [s for s in SCENARIOS if s.plant.__name__ not in ("_nothing", "_uniform")]
    assert len(planted) >= 15 and len(SCENARIOS) - len(planted) >= 5


def test_every_planted_pattern_is_found_with_its_number(scores: list[Score]) -> None:
    planted = [s for s in scores if s.planted]
    missed = [s.scenario for s in planted if not s.found]
    assert 1 - len(missed) / len(planted) >= 0.95, missed


def test_nothing_is_invented(scores: list[Score]) -> None:
    assert {s.scenario: s.invented for s in scores if s.invented} == {}
    assert {s.scenario: s.insights for s in scores if not s.planted and s.insights} == {}
