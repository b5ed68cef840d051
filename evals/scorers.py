"""Scorers of a focus-area run, as `mlflow.genai` scorers that need no LLM judge.

Each reads the run's outputs (see `evals.runner.run_case`: the steps that ran, the
report's text, the relationships it cites, its sections, grounding and usage, guard
rejections, latency) and the scenario's expectations (`evals.scenarios.expectations`),
and returns a `Feedback` whose rationale says what was wrong. The checks themselves are
plain functions (`check_*`) so tests can call them on a deliberately broken run.
"""

from __future__ import annotations

from typing import Any, Literal

from mlflow.entities import Feedback
from mlflow.genai.scorers import scorer

from evals.planted import states
from evals.scenarios import truth_of

# The kinds of finding that claim a relationship in the data (not a fact or a problem).
RELATIONSHIPS = ("slice", "cell", "shift", "correlation")


def check_steps(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """Every documented step ran, in order."""
    ran, expected = list(outputs.get("steps", [])), list(expectations["steps"])
    if outputs.get("error"):
        return 0.0, f"the run failed after {len(ran)} steps: {outputs['error']}"
    if ran == expected:
        return 1.0, f"all {len(expected)} steps ran in order"
    missing = [s for s in expected if s not in ran]
    if missing:
        return 0.0, f"steps that did not run: {', '.join(missing)}"
    return 0.0, f"steps ran out of order: {' -> '.join(ran)}"


def check_found(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """The report states the planted truth: its entity, its measure and its number."""
    truth = truth_of(expectations)
    if truth is None:
        return 1.0, "nothing is planted"
    line = states(truth, outputs.get("report", {}).get("text", ""))
    entity = ", ".join(f"{c} = {v}" for c, v in truth.where) or "the whole table"
    if line is None:
        return 0.0, f"no statement of {truth.measure} {truth.value:.6g} for {entity}"
    return 1.0, f"stated: {line[:300]}"


def check_invented(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """Relationships the report claims that nothing planted explains (a null base's).

    On a base whose columns relate to nothing, a cited slice, cell, break or correlation
    is invented unless it is about the planted entity. A cited finding that does not
    exist is invented anywhere.
    """
    invented = [f"unknown finding {i}" for i in outputs.get("unknown_citations", [])]
    if expectations.get("null_base"):
        truth = truth_of(expectations)
        planted = set(truth.where) if truth is not None else set()
        for f in outputs.get("findings", []):
            if f["kind"] not in RELATIONSHIPS:
                continue
            about = {(c, str(v)) for c, v in (f.get("labels") or {}).items()}
            if not about & planted:
                invented.append(f"{f['id']} {f.get('title', f['kind'])}")
    if not invented:
        return 0.0, "none invented"
    return float(len(invented)), "invented: " + "; ".join(invented[:5])


def check_grounding(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """Share of the narrative's numbers that match the evidence."""
    if outputs.get("error"):
        return 0.0, f"no report: {outputs['error']}"
    report = outputs.get("report", {})
    checked, ungrounded = int(report.get("numbers_checked", 0)), report.get("ungrounded", [])
    if not checked:
        return 1.0, "the narrative states no numbers"
    statements = max(len(ungrounded), int(report.get("ungrounded_statements", 0)))
    value = max(0.0, 1 - statements / checked)
    if ungrounded:
        return value, f"{len(ungrounded)} of {checked} numbers match no evidence: " + ", ".join(
            ungrounded[:10]
        )
    return value, f"all {checked} numbers match the evidence"


def check_sections(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """The report has the focus area's sections, in order."""
    titles = list(outputs.get("report", {}).get("sections", []))
    expected = list(expectations["sections"])
    missing = [t for t in expected if t not in titles]
    if missing:
        return 0.0, "missing sections: " + ", ".join(missing)
    if [t for t in titles if t in expected] != expected:
        return 0.0, "sections out of order: " + " / ".join(titles)
    return 1.0, f"all {len(expected)} sections"


def check_guard(outputs: dict[str, Any], expectations: dict[str, Any]) -> tuple[float, str]:
    """No guard rejection was ignored: after one, the narrative states nothing unverified."""
    rejections = outputs.get("rejections", [])
    if not rejections:
        return 1.0, "no query was rejected"
    sent = [" ".join(str(r.get("sql", "")).lower().split()) for r in rejections]
    repeated = sorted({q for q in sent if sent.count(q) > 1})
    if repeated:
        return 0.0, f"a rejected query was sent again unchanged: {repeated[0][:120]}"
    ungrounded = outputs.get("report", {}).get("ungrounded", [])
    if ungrounded:
        return 0.0, (
            f"{len(rejections)} rejected quer{'y' if len(rejections) == 1 else 'ies'} "
            f"(first: {rejections[0].get('reason', '')}) and the narrative still states "
            f"unverified numbers: {', '.join(ungrounded[:5])}"
        )
    return 1.0, f"{len(rejections)} rejected, and the narrative kept to the evidence"


def _from_check(check: Any, name: str, worst: Literal["min", "max"]) -> Any:
    """Return `check` as an mlflow scorer named `name`, aggregated by mean and `worst`."""

    def score(outputs: Any, expectations: Any) -> Feedback:
        value, rationale = check(outputs or {}, expectations or {})
        return Feedback(value=round(float(value), 4), rationale=rationale)

    score.__name__ = name
    return scorer(name=name, description=check.__doc__, aggregations=["mean", worst])(score)


steps_in_order = _from_check(check_steps, "steps_in_order", "min")
found = _from_check(check_found, "found", "min")
invented = _from_check(check_invented, "invented", "max")
grounding = _from_check(check_grounding, "grounding", "min")
report_sections = _from_check(check_sections, "report_sections", "min")
guard_respected = _from_check(check_guard, "guard_respected", "min")


@scorer(aggregations=["mean", "max"])
def latency_s(outputs: Any) -> Feedback:
    """Wall time of the run in seconds."""
    seconds = float((outputs or {}).get("latency_s", 0.0))
    return Feedback(value=round(seconds, 3), rationale=f"{seconds:.2f} s")


@scorer(aggregations=["mean", "max"])
def prompt_tokens(outputs: Any) -> Feedback:
    """Prompt tokens: what the model read, or the first prompt's size for the offline analyst."""
    usage = (outputs or {}).get("report", {}).get("usage", {})
    tokens = int(usage.get("input_tokens") or usage.get("prompt_tokens_estimate") or 0)
    return Feedback(value=tokens, rationale=f"{tokens:,} prompt tokens")


@scorer(aggregations=["mean", "max"])
def completion_tokens(outputs: Any) -> Feedback:
    """Completion tokens the model wrote (0 for the offline analyst)."""
    usage = (outputs or {}).get("report", {}).get("usage", {})
    tokens = int(usage.get("output_tokens") or 0)
    return Feedback(value=tokens, rationale=f"{tokens:,} completion tokens")


SCORERS = [
    steps_in_order,
    found,
    invented,
    grounding,
    report_sections,
    guard_respected,
    latency_s,
    prompt_tokens,
    completion_tokens,
]


def judges(model_uri: str) -> list[Any]:
    """Return LLM judges of relevance and actionability that call `model_uri`.

    `model_uri` is MLflow's judge model form, e.g. `databricks:/databricks-claude-sonnet-4`
    or `openai:/gpt-4o`. They read the question and the report's text; they need that model
    to be reachable, so they run only when asked for (`finmatch eval --judge URI`).
    """
    from mlflow.genai.scorers import Guidelines, RelevanceToQuery

    return [
        RelevanceToQuery(model=model_uri),
        Guidelines(
            name="actionability",
            model=model_uri,
            guidelines=[
                "Every recommendation names a concrete action a retail-banking manager can "
                "take, for a named customer segment, product or lifecycle stage.",
                "Every recommendation is justified by a finding the report states, with its "
                "numbers; none rests on a claim the report does not support.",
            ],
        ),
    ]
