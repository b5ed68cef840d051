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
from evals.planted import Truth, states
from evals.runner import evaluate, summarize, thresholds
from evals.scenarios import SCENARIOS, expectations
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


# A truth as the planted scenario reads it by SQL (here written out: no table is built).
STUDENTS = Truth("slice", "share_accepted", (("customer_segment", "Student"),), 0.182173)
STATED = 'The share "Accepted" is 18.2% for segment "Student" against 37.9% for the rest.'


def good(
    focus: str = OVERALL, scenario: str = "acceptance_of_a_segment", truth: Truth | None = STUDENTS
) -> tuple[dict[str, Any], Any]:
    """Outputs of a run that did everything right, and the expectations it meets."""
    expect = expectations(SCENARIOS[scenario], truth, focus)
    outputs = {
        "steps": list(expect["steps"]),
        "findings": [
            {
                "id": "OP-2",
                "kind": "slice",
                "measure": "share_accepted",
                "title": "Students",
                "labels": {"customer_segment": "Student"},
            }
        ],  # fmt: skip
        "report": {
            "text": f"Headline\nProduct Matching Performance:\n- {STATED} [OP-2]",
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
    for check in (scorers.check_steps, scorers.check_found, scorers.check_grounding):
        assert check(outputs, expect)[0] == 1.0
    assert scorers.check_sections(outputs, expect)[0] == 1.0
    assert scorers.check_guard(outputs, expect)[0] == 1.0
    assert scorers.check_invented(outputs, expect)[0] == 0.0


def test_a_statement_is_found_in_any_wording_with_its_number() -> None:
    assert states(STUDENTS, STATED)
    assert states(STUDENTS, "Only 18% of offers to Student customers are accepted")
    assert states(STUDENTS, "Acceptance among Student customers: 0.182") is not None
    # Each of entity, measure and number must be in the one statement.
    assert states(STUDENTS, "Only 25% of offers to Student customers are accepted") is None
    assert states(STUDENTS, "Student customers churn at 18.2%") is None
    assert states(STUDENTS, "18.2% of offers to Retail customers are accepted") is None
    assert states(STUDENTS, "Student customers\nhave an acceptance of 18.2%") is None


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
        "import:tests.graphs.scripted:failing", focus=[OVERALL], scenarios=["null_1"]
    )
    (outcome,) = outcomes
    assert outcome.scores["steps_in_order"] == 0.0
    assert any(f.startswith("steps_in_order") for f in outcome.failures)


def test_missed_and_invented_findings_are_scored() -> None:
    outputs, expect = good()
    missed = {**outputs, "report": {**outputs["report"], "text": "Nothing about students."}}
    value, why = scorers.check_found(missed, expect)
    assert value == 0.0 and "customer_segment = Student" in why
    # On a null base, a relationship cited about anything but the planted entity is
    # invented; on a base where the columns do relate, it is not.
    other = {"id": "OP-3", "kind": "cell", "measure": "share_accepted", "title": "Retail",
             "labels": {"customer_segment": "Retail", "product_type": "Mortgage"}}  # fmt: skip
    claimed = {**outputs, "findings": [*outputs["findings"], other]}
    value, why = scorers.check_invented(claimed, expect)
    assert value == 1.0 and "OP-3" in why
    _, nothing = good(scenario="null_1", truth=None)
    assert scorers.check_invented(outputs, nothing)[0] == 1.0
    assert scorers.check_found(outputs, nothing)[0] == 1.0  # nothing to find
    _, generated = good(scenario="sales_missing", truth=None)
    assert scorers.check_invented(claimed, generated)[0] == 0.0


def test_an_invented_number_or_missing_section_is_caught() -> None:
    outputs, expect = good()
    report = {**outputs["report"], "ungrounded": ["73.15%"]}
    value, why = scorers.check_grounding({**outputs, "report": report}, expect)
    assert value == pytest.approx(11 / 12) and "73.15%" in why
    assert value < thresholds()["runs"]["grounding"]["min"]
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

    (outcome,) = _outcomes(None, ["grounding"], {(OVERALL, "null_1"): {}})
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
    assert [(o.focus, o.scenario, o.failures) for o in outcomes if o.failures] == []
    suite = summarize(outcomes)
    assert suite.failures == [] and suite.recall >= 0.95 and suite.coverage == 1.0
    planted = [r for r in suite.scenarios if r.truth is not None]
    assert len(planted) >= 15 and len(suite.scenarios) - len(planted) >= 5
    assert all(r.found_by for r in planted) and sum(r.invented for r in suite.scenarios) == 0
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["steps_in_order/min"] == 1.0 and metrics["invented/max"] == 0.0
    assert metrics["recall"] == suite.recall


def test_an_analyst_that_invents_a_number_fails_grounding(home: Path) -> None:
    outcomes, _ = evaluate(
        "import:tests.evals.broken:inventing", focus=[OVERALL],
        scenarios=["acceptance_of_a_segment"],
    )  # fmt: skip
    (outcome,) = outcomes
    # It states a number no evidence holds and not the planted acceptance of a segment.
    assert [f.split()[0] for f in outcome.failures] == ["grounding"]
    assert outcome.scores["found"] == 0.0 and outcome.belongs
    assert outcome.scores["steps_in_order"] == 1.0 and outcome.scores["report_sections"] == 1.0
    assert outcome.scores["invented"] == 0.0 and outcome.scores["guard_respected"] == 1.0
    suite = summarize(outcomes)
    assert suite.recall == 0.0 and suite.failures[0].startswith("recall 0.000 < 0.95")


def test_the_eval_command(home: Path) -> None:
    env = {**os.environ}
    command = [sys.executable, "-m", "evals", "--focus", "strategic-recommendations"]
    ok = subprocess.run(
        [*command, "--scenario", "null_1", "uniform_750"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "null_1" in ok.stdout and "uniform_750" in ok.stdout and "recall 1.000" in ok.stdout
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
