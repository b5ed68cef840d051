"""Run the eval suite: every planted scenario x focus area through `mlflow.genai.evaluate`.

`evaluate()` builds each scenario's table once (under `<home>/evals/`, from one generated
base), runs the focus area's graph on it with the chosen model (one MLflow trace per
run), scores the runs with `evals.scorers` and logs it all as an MLflow run. Each run is
held to `runs` in `evals/thresholds.json`; `summarize()` gathers the runs by scenario
(which areas stated the truth, what was invented, grounding) and holds the suite to
`suite`: recall over the (scenario, area it belongs to) pairs, and coverage, every
planted scenario stated by an area it belongs to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals import planted
from evals.planted import Scenario, Truth
from evals.scenarios import BASE_ROWS, BASE_SEED, SCENARIOS, expectations, truth_of
from graphs.areas import FOCUS_AREAS
from graphs.compose import CITE
from graphs.context import Context
from graphs.report import narrative_numbers
from tools.ingest import seed_table
from tools.settings import project_home

THRESHOLDS = Path(__file__).with_name("thresholds.json")
EXPERIMENT = "finmatch-evals"


@dataclass(frozen=True)
class Outcome:
    """Scores of one focus area on one scenario, and the thresholds they missed."""

    focus: str
    scenario: str
    scores: dict[str, float]
    failures: list[str]
    truth: Truth | None = None
    belongs: bool = False  # the truth belongs in this area's report


def thresholds() -> dict[str, dict[str, dict[str, float]]]:
    """Return the pass thresholds: `runs` per scorer of each run, `suite` of the whole."""
    loaded: dict[str, dict[str, dict[str, float]]] = json.loads(THRESHOLDS.read_text())
    return loaded


def _version() -> str:
    """What a built table depends on: the planting code and the base's size and seed."""
    code = Path(planted.__file__).read_bytes()
    return hashlib.sha256(code + f"{BASE_ROWS}-{BASE_SEED}".encode()).hexdigest()[:10]


def table_for(scenario: Scenario, folder: Path) -> tuple[Path, Truth | None]:
    """Return the scenario's DuckDB table and its truth, building them the first time.

    The base (the generated table) is built once per folder; each scenario's table is
    copied from it and planted. The truth is kept beside the table, read by SQL when
    the pattern was planted.
    """
    version = _version()
    base = folder / f"base-{BASE_ROWS}-{BASE_SEED}.duckdb"
    if not base.with_suffix(".ready").exists():
        base.unlink(missing_ok=True)
        seed_table(base, rows=BASE_ROWS, seed=BASE_SEED)
        base.with_suffix(".ready").write_text("ready\n")
    path = folder / f"{scenario.name}-{version}.duckdb"
    # A marker, not a look inside: the agents may hold the file open read-only already.
    ready = path.with_suffix(".truth.json")
    if not (path.exists() and ready.exists()):
        ready.unlink(missing_ok=True)
        partial = path.with_suffix(".building")
        truth = planted.build(scenario, base, partial)
        partial.replace(path)
        ready.write_text(json.dumps(None if truth is None else dataclasses.asdict(truth)))
    found = json.loads(ready.read_text())
    return path, truth_of({"truth": found})


def run_case(
    focus: str,
    warehouse: Path,
    model: str,
    question: str,
    filters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one focus area's graph to its end; return what the scorers read."""
    from graphs.registry import AREA_GRAPHS

    scope: dict[str, Any] = dict(filters or {})
    context = Context(warehouse=f"duckdb:///{warehouse}", model=model, **scope)

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async for chunk in AREA_GRAPHS[focus].astream(
            {"question": question},
            context=context,
            stream_mode="values",
        ):
            out = chunk
        return out

    started = time.perf_counter()
    out = asyncio.run(go())
    latency = time.perf_counter() - started
    report = out.get("report") or {}
    analysis = out.get("analysis") or {}
    texts = [report.get("headline", "")]
    texts += [s["body"] for s in report.get("sections", [])]
    texts += [f"{r['action']} {r['rationale']}" for r in report.get("recommendations", [])]
    # What the analyst reported: the findings its narrative and recommendations cite.
    cited = {c for t in texts for c in CITE.findall(t)}
    cited |= {i for r in report.get("recommendations", []) for i in r.get("finding_ids", [])}
    bad = set(report.get("ungrounded", []))
    return {
        "steps": [s["step"] for s in out.get("steps", [])],
        # The relationships and problems the narrative cites, with what they are about.
        "findings": [
            {
                "id": f["id"],
                "kind": f["kind"],
                "measure": f.get("measure", ""),
                "title": f["title"],
                "labels": f.get("labels") or {},
            }
            for f in out.get("findings", [])
            if f.get("strength") != "descriptive" and f["id"] in cited
        ],  # fmt: skip
        "unknown_citations": report.get("unknown_finding_ids", []),
        "report": {
            "headline": report.get("headline", ""),
            # What an LLM judge reads: the narrative and the recommendations.
            "text": _text(report),
            "sections": [s["title"] for s in report.get("sections", [])],
            "numbers_checked": report.get("numbers_checked", 0),
            "ungrounded": report.get("ungrounded", []),
            # Every statement of an unmatched number counts, not each distinct one.
            "ungrounded_statements": sum(
                1 for t in texts for token in narrative_numbers(t) if token in bad
            ),
            "usage": report.get("usage", {}),
        },
        "rejections": analysis.get("rejections", []),
        "latency_s": latency,
    }


def _text(report: dict[str, Any]) -> str:
    parts = [report.get("headline", "")]
    parts += [f"{s['title']}:\n{s['body']}" for s in report.get("sections", [])]
    parts += [
        f"{r['priority']}. {r['action']} - {r['rationale']}"
        for r in report.get("recommendations", [])
    ]
    return "\n".join(parts)


def evaluate(
    model: str = "offline",
    focus: Sequence[str] = (),
    scenarios: Sequence[str] = (),
    folder: Path | None = None,
    judge: str = "",
) -> tuple[list[Outcome], str]:
    """Run the suite; return the outcome of each focus area x scenario and the MLflow run id."""
    # Offline on a SQLite store: mlflow's default adaptive rate limit and 40 predict
    # threads exhaust its connection pool and drop rows.
    os.environ.setdefault("MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT", "0")
    os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "4")
    # predict is traced already; mlflow's check would run the first case an extra time.
    os.environ.setdefault("MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION", "true")
    import mlflow

    from evals.scorers import SCORERS, judges
    from service.tracking import TracingSettings, use_tracking
    from tools.settings import current

    focus = list(focus) or list(FOCUS_AREAS)
    names = list(scenarios) or list(SCENARIOS)
    folder = folder or project_home() / "evals"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {name: table_for(SCENARIOS[name], folder) for name in names}
    use_tracking(current(TracingSettings).mlflow_tracking_uri, EXPERIMENT)

    @mlflow.trace(name="focus_area_run")
    def predict(scenario: str, focus: str, model: str) -> dict[str, Any]:
        try:
            return run_case(focus, tables[scenario][0], model, "")
        except Exception as e:  # a failed run is scored, not a crash of the suite
            return {"error": f"{type(e).__name__}: {e}", "steps": [], "findings": []}

    expected = {
        (slug, name): expectations(SCENARIOS[name], tables[name][1], slug)
        for name in names
        for slug in focus
    }
    data = [
        {
            "inputs": {"scenario": name, "focus": slug, "model": model},
            "expectations": expected[(slug, name)],
        }
        for (slug, name) in expected
    ]
    with mlflow.start_run(run_name=f"eval {model}") as run:
        mlflow.set_tag("finmatch.kind", "eval")
        mlflow.log_params({"model": model, "focus": ",".join(focus), "scenarios": ",".join(names)})
        chosen = [*SCORERS, *(judges(judge) if judge else [])]
        result = mlflow.genai.evaluate(data=data, predict_fn=predict, scorers=chosen)
        outcomes = _outcomes(result.result_df, [s.name for s in chosen], expected)
        suite = summarize(outcomes)
        mlflow.log_metrics({"recall": suite.recall, "coverage": suite.coverage})
    return outcomes, run.info.run_id


def _outcomes(
    frame: Any, scorer_names: list[str], expected: dict[tuple[str, str], dict[str, Any]]
) -> list[Outcome]:
    limits = thresholds()["runs"]
    groups: dict[tuple[str, str], dict[str, list[float]]] = {key: {} for key in expected}
    rows = [] if frame is None else [row for _, row in frame.iterrows()]
    for row in rows:
        inputs = row.get("request")
        if not isinstance(inputs, dict):
            continue
        key = (str(inputs.get("focus")), str(inputs.get("scenario")))
        for name in scorer_names:
            value = row.get(f"{name}/value")
            value = {"yes": 1.0, "no": 0.0}.get(value, value)  # an LLM judge's verdict
            if isinstance(value, int | float) and value == value:  # NaN: the scorer failed
                groups.setdefault(key, {}).setdefault(name, []).append(float(value))
    outcomes = []
    for (slug, scenario), values in sorted(groups.items()):
        expect = expected.get((slug, scenario), {})
        truth = truth_of(expect)
        scores = {name: sum(v) / len(v) for name, v in values.items()}
        failures = []
        if not values:  # mlflow returned no result for this run: never a pass
            failures.append("no result was returned for the run")
        else:
            for name, limit in limits.items():
                if name not in scores:
                    failures.append(f"{name}: no score (the scorer failed)")
                elif "min" in limit and scores[name] < limit["min"]:
                    failures.append(f"{name} {scores[name]:.3f} < {limit['min']}")
                elif "max" in limit and scores[name] > limit["max"]:
                    failures.append(f"{name} {scores[name]:.3f} > {limit['max']}")
        outcomes.append(
            Outcome(slug, scenario, scores, failures, truth, bool(expect.get("belongs")))
        )
    return outcomes


@dataclass(frozen=True)
class ScenarioScore:
    """How the four areas did on one scenario, together."""

    scenario: str
    truth: Truth | None
    belongs: tuple[str, ...]  # the areas whose reports should state it
    found_by: tuple[str, ...]  # the areas whose reports did
    invented: int  # relationships claimed that nothing planted explains, all areas
    grounding: float  # the least grounded report's share


@dataclass(frozen=True)
class Summary:
    """The suite's figures: per scenario, recall, coverage and what missed a threshold."""

    scenarios: list[ScenarioScore]
    recall: float  # of the (scenario, area it belongs to) pairs, the share stated
    coverage: float  # of the planted scenarios, the share some area it belongs to states
    failures: list[str]


def summarize(outcomes: list[Outcome]) -> Summary:
    """Aggregate the runs by scenario; check the suite's thresholds (`suite` in the file)."""
    by: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by.setdefault(o.scenario, []).append(o)
    rows = []
    for name, runs in by.items():
        truth = runs[0].truth
        rows.append(
            ScenarioScore(
                scenario=name,
                truth=truth,
                belongs=tuple(o.focus for o in runs if o.belongs),
                found_by=tuple(o.focus for o in runs if o.belongs and o.scores.get("found")),
                invented=int(sum(o.scores.get("invented", 0) for o in runs)),
                grounding=min(o.scores.get("grounding", 0.0) for o in runs),
            )
        )
    pairs = sum(len(r.belongs) for r in rows)
    planted = [r for r in rows if r.belongs]
    recall = sum(len(r.found_by) for r in rows) / pairs if pairs else 1.0
    coverage = sum(1 for r in planted if r.found_by) / len(planted) if planted else 1.0
    limits = thresholds()["suite"]
    failures = []
    if recall < limits["recall"]["min"]:
        failures.append(f"recall {recall:.3f} < {limits['recall']['min']}")
    if coverage < limits["coverage"]["min"]:
        missed = [r.scenario for r in planted if not r.found_by]
        failures.append(
            f"coverage {coverage:.3f} < {limits['coverage']['min']}: no area it belongs to "
            f"states {', '.join(missed)}"
        )
    return Summary(rows, recall, coverage, failures)


def _cells(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


SHORT = {
    "overall-performance": "OP",
    "optimization-opportunities": "OPT",
    "financial-impact": "FIN",
    "strategic-recommendations": "STR",
}


def render_summary(suite: Summary) -> str:
    """Return the suite's figures: a line per scenario, then recall and coverage."""
    rows = [["scenario", "truth", "found by / belongs", "invented", "grounding", "entity"]]
    for r in suite.scenarios:
        t = r.truth
        truth = "nothing planted" if t is None else f"{t.kind} {t.measure} = {t.value:.6g}"
        where = "-" if t is None else ", ".join(f"{c}={v}" for c, v in t.where) or "table"
        found = ",".join(SHORT.get(a, a) for a in r.found_by) or "-"
        belongs = ",".join(SHORT.get(a, a) for a in r.belongs) or "-"
        rows.append(
            [r.scenario, truth, f"{found} / {belongs}", str(r.invented), f"{r.grounding:.2f}",
             where]
        )  # fmt: skip
    verdict = "; ".join(suite.failures) if suite.failures else "all met"
    return (
        _cells(rows) + f"\n\nrecall {suite.recall:.3f} (stated where it belongs), coverage "
        f"{suite.coverage:.3f} (each planted scenario stated by an area it belongs to): " + verdict
    )


def render(outcomes: list[Outcome]) -> str:
    """Return the scores as a text table, one line per focus area x scenario."""
    columns = [
        ("steps", "steps_in_order"),
        ("found", "found"),
        ("invented", "invented"),
        ("grounding", "grounding"),
        ("sections", "report_sections"),
        ("guard", "guard_respected"),
        ("latency s", "latency_s"),
        ("prompt tok", "prompt_tokens"),
        ("compl tok", "completion_tokens"),
    ]
    if any("actionability" in o.scores for o in outcomes):
        columns += [("relevance", "relevance_to_query"), ("actionable", "actionability")]
    head = ["focus area", "scenario", *[c[0] for c in columns], "result"]
    rows = []
    for o in outcomes:
        cells = [o.focus, o.scenario]
        for _, name in columns:
            value = o.scores.get(name)
            cells.append(
                "-" if value is None else f"{value:,.2f}" if value % 1 else f"{value:,.0f}"
            )
        cells.append("pass" if not o.failures else "FAIL: " + "; ".join(o.failures))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *rows]:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        )
    return "\n".join(lines)
