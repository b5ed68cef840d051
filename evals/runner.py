"""Run the eval suite: every scenario x focus area through `mlflow.genai.evaluate`.

`evaluate()` builds each scenario's table once (under `<home>/evals/`), runs the focus
area's graph on it with the chosen model (one MLflow trace per run), scores the runs with
`evals.scorers` and logs it all as an MLflow run. `check()` compares each focus area x
scenario's scores with `evals/thresholds.json`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.scenarios import SCENARIOS, Scenario
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


def thresholds() -> dict[str, dict[str, float]]:
    """Return the pass thresholds: per scorer, a `min` or a `max` of its mean."""
    loaded: dict[str, dict[str, float]] = json.loads(THRESHOLDS.read_text())
    return loaded


def table_for(scenario: Scenario, folder: Path) -> Path:
    """Return the scenario's DuckDB table, generating it the first time."""
    truth = hashlib.sha256(repr(scenario.relationships).encode()).hexdigest()[:10]
    path = folder / f"{scenario.name}-{scenario.rows}-{scenario.seed}-{truth}.duckdb"
    # A marker, not a look inside: the agents may hold the file open read-only already.
    ready = path.with_suffix(".ready")
    if not (path.exists() and ready.exists()):
        ready.unlink(missing_ok=True)
        seed_table(
            path, rows=scenario.rows, seed=scenario.seed, relationships=scenario.relationships
        )
        ready.write_text(f"{scenario.relationships}\n")
    return path


def run_case(
    focus: str,
    warehouse: Path,
    model: str,
    question: str,
    filters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one focus area's graph to its end; return what the scorers read."""
    from graphs.portfolio import AREA_GRAPHS

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
        "findings": [
            {"id": f["id"], "kind": f["kind"], "strength": f["strength"]}
            for f in out.get("findings", [])
            if f.get("strength") != "descriptive" and f["id"] in cited
        ],
        "unknown_citations": report.get("unknown_finding_ids", []),
        "report": {
            "headline": report.get("headline", ""),
            # What an LLM judge reads: the narrative and the recommendations.
            "text": _text(report)[:8000],
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
    parts += [f"{s['title']}: {s['body']}" for s in report.get("sections", [])]
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
    def predict(
        scenario: str, focus: str, model: str, question: str, filters: dict[str, str]
    ) -> dict[str, Any]:
        try:
            return run_case(focus, tables[scenario], model, question, filters)
        except Exception as e:  # a failed run is scored, not a crash of the suite
            return {"error": f"{type(e).__name__}: {e}", "steps": [], "findings": []}

    data = [
        {
            "inputs": {
                "scenario": name,
                "focus": slug,
                "model": model,
                "question": SCENARIOS[name].question,
                "filters": SCENARIOS[name].filters,
            },
            "expectations": SCENARIOS[name].expectations(slug),
        }
        for name in names
        for slug in focus
    ]
    with mlflow.start_run(run_name=f"eval {model}") as run:
        mlflow.set_tag("finmatch.kind", "eval")
        mlflow.log_params({"model": model, "focus": ",".join(focus), "scenarios": ",".join(names)})
        chosen = [*SCORERS, *(judges(judge) if judge else [])]
        result = mlflow.genai.evaluate(data=data, predict_fn=predict, scorers=chosen)
    expected = [(slug, name) for name in names for slug in focus]
    outcomes = _outcomes(result.result_df, [s.name for s in chosen], expected)
    return outcomes, run.info.run_id


def _outcomes(
    frame: Any, scorer_names: list[str], expected: list[tuple[str, str]]
) -> list[Outcome]:
    limits = thresholds()
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
        scores = {name: sum(v) / len(v) for name, v in values.items()}
        failures = []
        if not values:  # mlflow returned no result for this run: never a pass
            outcomes.append(Outcome(slug, scenario, {}, ["no result was returned for the run"]))
            continue
        for name, limit in limits.items():
            if name not in scores:
                failures.append(f"{name}: no score (the scorer failed)")
            elif "min" in limit and scores[name] < limit["min"]:
                failures.append(f"{name} {scores[name]:.3f} < {limit['min']}")
            elif "max" in limit and scores[name] > limit["max"]:
                failures.append(f"{name} {scores[name]:.3f} > {limit['max']}")
        outcomes.append(Outcome(slug, scenario, scores, failures))
    return outcomes


def render(outcomes: list[Outcome]) -> str:
    """Return the scores as a text table, one line per focus area x scenario."""
    columns = [
        ("steps", "steps_in_order"),
        ("recall", "planted_recall"),
        ("invented", "invented_rate"),
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
