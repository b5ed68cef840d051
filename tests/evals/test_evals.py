"""The eval suite: the offline analyst passes, broken analysts fail the right scorer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from evals import scorers
from evals.runner import evaluate, thresholds
from evals.scenarios import SCENARIOS
from graphs.areas import FOCUS_AREAS

ROOT = Path(__file__).resolve().parents[2]
OVERALL = "overall-performance"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("evals-home")
    saved = {k: os.environ.get(k) for k in ("FINMATCH_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["FINMATCH_HOME"] = str(path)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path / 'mlflow.db'}"
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def good(focus: str = OVERALL, scenario: str = "planted") -> tuple[dict[str, Any], Any]:
    """Outputs of a run that did everything right, and the expectations it meets."""
    expect = SCENARIOS[scenario].expectations(focus)
    outputs = {
        "steps": list(expect["steps"]),
        "findings": [
            {"id": f"F{i}", "kind": k, "strength": "strong"}
            for i, k in enumerate(expect["must_find"])
        ],
        "report": {
            "sections": list(expect["sections"]),
            "numbers_checked": 12,
            "ungrounded": [],
            "usage": {"input_tokens": 900, "output_tokens": 300},
        },
        "rejections": [],
        "latency_s": 1.5,
    }
    return outputs, expect


def test_a_good_run_scores_full_marks() -> None:
    outputs, expect = good()
    for check in (scorers.check_steps, scorers.check_recall, scorers.check_grounding):
        assert check(outputs, expect)[0] == 1.0
    assert scorers.check_sections(outputs, expect)[0] == 1.0
    assert scorers.check_guard(outputs, expect)[0] == 1.0
    assert scorers.check_invented(outputs, expect)[0] == 0.0


def test_a_skipped_or_reordered_step_fails_steps_in_order() -> None:
    outputs, expect = good()
    skipped = {**outputs, "steps": outputs["steps"][:2] + outputs["steps"][3:]}
    value, why = scorers.check_steps(skipped, expect)
    assert value == 0.0 and expect["steps"][2] in why
    swapped = {
        **outputs,
        "steps": [outputs["steps"][1], outputs["steps"][0], *outputs["steps"][2:]],
    }
    assert scorers.check_steps(swapped, expect) == (
        0.0,
        "steps ran out of order: " + " -> ".join(swapped["steps"]),
    )


def test_an_analyst_whose_model_fails_is_scored_not_crashed(home: Path) -> None:
    outcomes, _ = evaluate(
        "import:tests.graphs.scripted:failing", focus=[OVERALL], scenarios=["none"]
    )
    (outcome,) = outcomes
    assert outcome.scores["steps_in_order"] == 0.0
    assert any(f.startswith("steps_in_order") for f in outcome.failures)


def test_missed_and_invented_findings_are_scored() -> None:
    outputs, expect = good()
    missed = {**outputs, "findings": outputs["findings"][1:]}
    value, why = scorers.check_recall(missed, expect)
    assert value == pytest.approx(1 - 1 / len(expect["must_find"]))
    assert expect["must_find"][0] in why
    # On a table with nothing planted, every material finding is invented.
    _, none = good(scenario="none")
    value, why = scorers.check_invented(outputs, none)
    assert value == 1.0 and "lagging_cell" in why
    # Without the lagging cell planted, reporting one is an invention.
    _, no_cell = good(scenario="no-lagging-cell")
    assert "lagging_cell" not in no_cell["must_find"] + no_cell["may_find"]


def test_an_invented_number_or_missing_section_is_caught() -> None:
    outputs, expect = good()
    report = {**outputs["report"], "ungrounded": ["73.15%"]}
    value, why = scorers.check_grounding({**outputs, "report": report}, expect)
    assert value == pytest.approx(11 / 12) and "73.15%" in why
    assert value < thresholds()["grounding"]["min"]
    cut = {**outputs["report"], "sections": outputs["report"]["sections"][:-1]}
    value, why = scorers.check_sections({**outputs, "report": cut}, expect)
    assert value == 0.0 and expect["sections"][-1] in why


def test_each_statement_of_an_invented_number_counts() -> None:
    outputs, expect = good()
    report = {**outputs["report"], "numbers_checked": 19, "ungrounded": ["73.15%"]}
    report["ungrounded_statements"] = 4
    value, _ = scorers.check_grounding({**outputs, "report": report}, expect)
    assert value == pytest.approx(15 / 19)
    failed = {"error": "ConnectionError: endpoint down", "steps": [], "findings": []}
    assert scorers.check_grounding(failed, expect)[0] == 0.0
    assert "endpoint down" in scorers.check_steps(failed, expect)[1]


def test_citing_a_finding_that_does_not_exist_is_invention() -> None:
    outputs, expect = good()
    value, why = scorers.check_invented({**outputs, "unknown_citations": ["OP-99"]}, expect)
    assert value > 0 and "OP-99" in why


def test_a_run_mlflow_returned_no_result_for_fails() -> None:
    from evals.runner import _outcomes

    (outcome,) = _outcomes(None, ["grounding"], [(OVERALL, "planted")])
    assert outcome.failures == ["no result was returned for the run"]


def test_a_rejection_followed_by_unverified_numbers_fails_the_guard_scorer() -> None:
    outputs, expect = good()
    rejected = {**outputs, "rejections": [{"sql": "DROP TABLE x", "reason": "not a query"}]}
    assert scorers.check_guard(rejected, expect)[0] == 1.0  # it kept to the evidence
    ignored = {**rejected, "report": {**outputs["report"], "ungrounded": ["41.2"]}}
    value, why = scorers.check_guard(ignored, expect)
    assert value == 0.0 and "not a query" in why and "41.2" in why
    again = {**rejected, "rejections": rejected["rejections"] * 2}
    value, why = scorers.check_guard(again, expect)
    assert value == 0.0 and "sent again unchanged" in why


def test_the_offline_analyst_passes_every_threshold(home: Path) -> None:
    outcomes, run_id = evaluate("offline")
    assert {(o.focus, o.scenario) for o in outcomes} == {
        (f, s) for f in FOCUS_AREAS for s in SCENARIOS
    }
    assert [o for o in outcomes if o.failures] == []
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["steps_in_order/min"] == 1.0 and metrics["invented_rate/max"] == 0.0


def test_an_analyst_that_invents_a_number_fails_grounding(home: Path) -> None:
    outcomes, _ = evaluate(
        "import:tests.evals.broken:inventing", focus=[OVERALL], scenarios=["planted"]
    )
    (outcome,) = outcomes
    # It states a number no evidence holds and cites none of the planted findings.
    assert sorted(f.split()[0] for f in outcome.failures) == ["grounding", "planted_recall"]
    assert outcome.scores["planted_recall"] == 0.0
    assert outcome.scores["steps_in_order"] == 1.0 and outcome.scores["report_sections"] == 1.0
    assert outcome.scores["invented_rate"] == 0.0 and outcome.scores["guard_respected"] == 1.0


def test_the_eval_command(home: Path) -> None:
    env = {**os.environ}
    command = [sys.executable, "-m", "evals", "--focus", "strategic-recommendations"]
    ok = subprocess.run(
        [*command, "--scenario", "none"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "strategic-recommendations" in ok.stdout and "pass" in ok.stdout
    assert "thresholds in thresholds.json: all met" in ok.stdout
    bad = subprocess.run(
        [*command, "--scenario", "nope"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown scenario nope" in bad.stderr


def test_llm_judges_are_added_only_when_asked_for() -> None:
    """The judges need a hosted model, which cannot run here: only their set-up is checked."""
    chosen = scorers.judges("databricks:/databricks-claude-sonnet-4")
    assert [j.name for j in chosen] == ["relevance_to_query", "actionability"]
    assert all(j.model == "databricks:/databricks-claude-sonnet-4" for j in chosen)
    assert not {j.name for j in chosen} & {s.name for s in scorers.SCORERS}
