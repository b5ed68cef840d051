"""The four focus-area graphs on real DuckDB tables: steps, planted findings, scope."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest

from graphs.areas import FOCUS_AREAS
from graphs.context import Context
from graphs.registry import AREA_GRAPHS
from graphs.report import Report
from tests.conftest import frame

# The workflow steps each agent is documented with, as the product's specification lists
# them (agent name -> steps in order).
DOCUMENTED_STEPS = Path(__file__).with_name("workflow_steps.json")


def run(slug: str, path: Path, **context: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a focus-area graph to the end; return its output and its custom events.

    A step's finish is its record in the state (checkpointed with its results), not an
    event: `out["steps"]`.
    """
    events: list[dict[str, Any]] = []

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async for mode, chunk in AREA_GRAPHS[slug].astream(
            {"question": ""},
            context=Context(warehouse=f"duckdb:///{path}", **context),
            stream_mode=["custom", "values"],
        ):
            if mode == "custom":
                events.append(chunk)
            else:
                out = chunk
        return out

    return asyncio.run(go()), events


@pytest.fixture(scope="module")
def planted(large_path: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    return {slug: run(slug, large_path) for slug in AREA_GRAPHS}


def finding(out: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(f for f in out["findings"] if f["kind"] == kind)


def test_node_names_are_the_documented_steps_in_order() -> None:
    documented = json.loads(DOCUMENTED_STEPS.read_text())
    assert set(documented) == {a.name for a in FOCUS_AREAS.values()}
    for slug, graph in AREA_GRAPHS.items():
        nodes = [n for n in graph.get_graph().nodes if not n.startswith("__")]
        assert nodes == documented[FOCUS_AREAS[slug].name], slug


def test_every_focus_area_is_a_spec_and_a_module_studio_lists() -> None:
    from graphs.registry import module_of

    studio = json.loads((Path(__file__).parents[2] / "langgraph.json").read_text())["graphs"]
    assert set(AREA_GRAPHS) == set(FOCUS_AREAS)
    for slug in FOCUS_AREAS:
        assert studio[slug]["path"] == f"{module_of(slug)}:graph", slug
        assert AREA_GRAPHS[slug].name == slug


def test_a_step_function_is_placed_by_its_name() -> None:
    from graphs.areas import OVERALL
    from graphs.steps import area_step

    async def banking_pattern_recognition(state: Any, runtime: Any) -> Any:
        """Stand-in body."""

    node = area_step(OVERALL)(banking_pattern_recognition)
    assert node.__name__ == "banking_pattern_recognition"

    async def pattern_recognition(state: Any, runtime: Any) -> Any:
        """Named after no step."""

    with pytest.raises(ValueError, match="named after no step of Overall Performance; name it"):
        area_step(OVERALL)(pattern_recognition)


def insight(out: dict[str, Any], kind: str, measure: str, **labels: str) -> dict[str, Any]:
    """The engine's finding of `kind` on `measure` about exactly the records `labels` name."""
    return next(
        f for f in out["findings"]
        if f["kind"] == kind and f["measure"] == measure and f["labels"] == labels
    )  # fmt: skip


def section(out: dict[str, Any], title: str) -> str:
    return next(s["body"] for s in out["report"]["sections"] if s["title"] == title)


def test_optimization_names_the_planted_lagging_cell_with_its_numbers(
    planted: dict[str, Any], large_path: Path
) -> None:
    out, _ = planted["optimization-opportunities"]
    df = frame(large_path)
    segment, product = df.customer_segment == "Small Business", df.product_type == "Personal Loan"
    accepted = df.product_recommendation_status == "Accepted"
    f = insight(
        out, "cell", "share_accepted",
        customer_segment="Small Business", product_type="Personal Loan",
    )  # fmt: skip
    assert f["numbers"]["value_in"] == pytest.approx(accepted[segment & product].mean())
    assert f["numbers"]["first_margin"] == pytest.approx(accepted[segment].mean())
    assert f["numbers"]["second_margin"] == pytest.approx(accepted[product].mean())
    assert f["sample_size"] == (segment & product).sum()
    assert f"{100 * accepted[segment & product].mean():.1f}%" in f["claim"]
    assert '"Small Business"' in f["claim"] and '"Personal Loan"' in f["claim"]
    # What acting is worth: the cell's records at the margins' prediction, its own sale.
    assert f["numbers"]["money"] > 0 and "more in sales" in f["claim"]
    assert f["id"] in section(out, "Targeting Gaps")
    report = Report(**out["report"])
    assert report.ungrounded == [] and report.unknown_finding_ids == []
    assert any(f["id"] in r.finding_ids for r in report.recommendations)


def test_overall_and_strategic_measure_acceptance_by_band(
    planted: dict[str, Any], large_path: Path
) -> None:
    """Acceptance in the top quartile of affinity (Overall) and of score (Strategic)."""
    df = frame(large_path)
    accepted = df.product_recommendation_status == "Accepted"
    for slug, column, where in (
        ("overall-performance", "customer_product_affinity", "Product Matching Performance"),
        ("strategic-recommendations", "recommendation_score", "Personalization Advantage"),
    ):
        out, _ = planted[slug]
        top = df[column] > df[column].quantile(0.75)
        f = next(
            f for f in out["findings"]
            if f["kind"] == "slice" and f["measure"] == "share_accepted"
            and f["labels"].get(f"band_{column}", "").startswith("over ")
        )  # fmt: skip
        assert f["numbers"]["value_in"] == pytest.approx(accepted[top].mean()), slug
        assert f["numbers"]["value_rest"] == pytest.approx(accepted[~top].mean()), slug
        assert f["sample_size"] == top.sum() and f["strength"] == "strong", slug
        assert f["id"] in section(out, where), slug


def test_financial_impact_finds_the_inactive_churn_risk(
    planted: dict[str, Any], large_path: Path
) -> None:
    out, _ = planted["financial-impact"]
    df = frame(large_path)
    inactive = df.customer_lifecycle_stage == "Inactive"
    f = insight(
        out, "slice", "mean_customer_churn_probability", customer_lifecycle_stage="Inactive"
    )
    churn = df.customer_churn_probability
    assert f["numbers"]["value_in"] == pytest.approx(churn[inactive].mean())
    assert f["numbers"]["value_rest"] == pytest.approx(churn[~inactive].mean())
    gap = churn[inactive].mean() - churn[~inactive].mean()
    # The balance the higher churn puts at risk.
    assert f["numbers"]["money"] == pytest.approx(gap * df.account_balance[inactive].sum())
    assert f["id"] in section(out, "Customer Lifetime Value at Risk")
    sales = finding(out, "revenue_top_product_type")
    by_type = df.groupby("product_type").product_sales_amount.sum()
    assert sales["title"] == f'Sales concentrate in "{by_type.idxmax()}"'
    assert sales["numbers"]["total_sales"] == pytest.approx(by_type.max())


def test_segment_balances_are_told_with_their_means(
    planted: dict[str, Any], large_path: Path
) -> None:
    """Balances depend on segment (planted): each segment told has its mean and the
    rest's; Financial Impact tells the richest."""
    df = frame(large_path)
    told = 0
    for slug in ("overall-performance", "financial-impact"):
        out, _ = planted[slug]
        for f in out["findings"]:
            if f["measure"] != "mean_account_balance" or list(f["labels"]) != ["customer_segment"]:
                continue
            inside = df.customer_segment == f["labels"]["customer_segment"]
            assert f["numbers"]["value_in"] == pytest.approx(df.account_balance[inside].mean())
            assert f["numbers"]["value_rest"] == pytest.approx(df.account_balance[~inside].mean())
            assert f"${df.account_balance[inside].mean():,.0f}" in f["claim"], slug
            told += 1
    assert told >= 2
    richest = str(df.groupby("customer_segment").account_balance.mean().idxmax())
    insight(planted["financial-impact"][0], "slice", "mean_account_balance",
            customer_segment=richest)  # fmt: skip


@pytest.fixture(scope="module")
def shuffled(large_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The four areas on the large table with each column shuffled on its own."""
    from evals.planted import shuffle

    path = tmp_path_factory.mktemp("shuffled") / "fpr.duckdb"
    shutil.copy(large_path, path)
    con = duckdb.connect(str(path))
    shuffle(con, 3)
    con.close()
    return {slug: run(slug, path) for slug in AREA_GRAPHS}


def test_no_relationship_is_invented_on_a_table_without_any(shuffled: dict[str, Any]) -> None:
    """Shuffled columns relate to nothing: only data problems and facts may be told."""
    for slug, (out, _) in shuffled.items():
        material = [
            f["title"] for f in out["findings"]
            if f["strength"] != "descriptive" and f["kind"] != "quality"
        ]  # fmt: skip
        assert material == [], slug
        report = Report(**out["report"])
        assert "No relationship in this scope is material" in report.headline, slug
        assert report.ungrounded == [], slug
        # The shuffle breaks the source contract (a sale with every acceptance): told first.
        assert "Data quality: " in report.sections[0].body, slug


def test_every_step_reports_start_and_finish_with_its_numbers(planted: dict[str, Any]) -> None:
    for slug, (out, events) in planted.items():
        steps = [s.name for s in FOCUS_AREAS[slug].steps]
        starts = [e["step"] for e in events if e["type"] == "step_start"]
        finishes = out["steps"]
        assert starts == steps and [e["step"] for e in finishes] == steps
        assert [e["index"] for e in finishes] == list(range(1, len(steps) + 1))
        assert all(e["total"] == len(steps) for e in finishes)
        assert all(re.search(r"\d", e["detail"]) for e in finishes), slug
    first = planted["overall-performance"][0]["steps"][0]
    assert first["detail"].startswith("20,000 recommendations")


def test_scope_reaches_every_query(large_path: Path) -> None:
    out, events = run(
        "optimization-opportunities", large_path, segment="Student", date_from="2024-06-01"
    )
    df = frame(large_path)
    scoped = df[
        (df.customer_segment == "Student") & (df.product_recommendation_date >= "2024-06-01")
    ]
    first = out["steps"][0]
    assert first["detail"].startswith(f"{len(scoped):,} recommendations")
    report = Report(**out["report"])
    assert "Student" in report.scope and "2024-06-01" in report.scope
    assert all(e.parameters.get("f_segment") == "Student" for e in report.evidence)
    assert all("customer_segment = " in e.sql for e in report.evidence)
    overview = finding(out, "overview")
    assert overview["numbers"]["records"] == len(scoped)


def test_report_markdown_has_the_sections_findings_and_queries(planted: dict[str, Any]) -> None:
    for slug, (out, _) in planted.items():
        report = Report(**out["report"])
        assert [s.title for s in report.sections] == list(FOCUS_AREAS[slug].titles)
        md = report.markdown()
        for title in FOCUS_AREAS[slug].titles:
            assert f"## {title}" in md
        assert md.count("```sql") == len(report.evidence) > 0
        assert "offline analyst" in md


def _portfolio(path: Path, **context: Any) -> dict[str, Any]:
    from graphs.portfolio import graph

    ctx = Context(warehouse=f"duckdb:///{path}", **context)
    return asyncio.run(graph.ainvoke({"question": ""}, context=ctx))


@pytest.mark.parametrize("slug", [*AREA_GRAPHS, "all"])
def test_an_empty_scope_gets_a_report_saying_so_and_what_to_widen(
    slug: str, large_path: Path
) -> None:
    scope = {"segment": "Student", "date_from": "2030-01-01"}
    out = _portfolio(large_path, **scope) if slug == "all" else run(slug, large_path, **scope)[0]
    reports = out["reports"].values() if slug == "all" else [out["report"]]
    total = len(frame(large_path))
    students = int((frame(large_path).customer_segment == "Student").sum())
    for report in reports:
        assert report["headline"].startswith("No records match this scope [")
        body = report["sections"][0]["body"]
        assert 'No recommendation matches segment = "Student", from 2030-01-01' in body
        assert f"without from 2030-01-01, {students:,} match" in body
        assert f"The data holds {total:,} recommendations" in body
        assert report["recommendations"][0]["action"].startswith("Widen the scope")
        assert report["ungrounded"] == []
        kinds = {f["kind"] for f in report["findings"]}
        assert kinds == {"scope"}  # nothing else is claimed of no data
    if slug == "all":
        assert "No records match this scope" in out["summary"]["markdown"]


def test_a_scope_too_small_to_compare_says_so(large_path: Path) -> None:
    counts = frame(large_path).groupby("product_recommendation_date").size()
    day, n = next((k, v) for k, v in counts.items() if 5 <= v < 60)  # one day's records
    when = str(day)[:10]
    out, _ = run("optimization-opportunities", large_path, date_from=when, date_to=when)
    report = out["report"]
    assert report["headline"].startswith("Too few records to compare groups [")
    assert f"Only {n:,} recommendations match" in report["sections"][0]["body"]
    assert not [f for f in report["findings"] if f["strength"] != "descriptive"]


@pytest.fixture(scope="module")
def rough_path(tmp_path_factory: pytest.TempPathFactory, seeded_path: Path) -> Path:
    """The 750-row table as a warehouse the loader never saw may hold it: every nullable
    column empty, non-finite amounts, and NULLs in columns the schema says are required."""
    import shutil

    import duckdb

    path = tmp_path_factory.mktemp("rough") / "fpr.duckdb"
    shutil.copy(seeded_path, path)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT * FROM fpr_records")
    con.execute("DROP TABLE fpr_records")
    con.execute("ALTER TABLE t RENAME TO fpr_records")
    con.execute("DROP TABLE IF EXISTS fpr_customers")  # no snapshot: computed from the records
    con.execute("UPDATE fpr_records SET product_sales_date = NULL")
    con.execute("UPDATE fpr_records SET account_balance = 'NaN' WHERE hash(record_id) % 9 = 0")
    con.execute(
        "UPDATE fpr_records SET customer_transaction_value = 'inf' WHERE hash(record_id) % 11 = 0"
    )
    for i, column in enumerate(
        ["customer_satisfaction_score", "customer_churn_probability", "customer_segment",
         "product_type", "recommendation_score", "customer_product_affinity"]
    ):  # fmt: skip
        con.execute(f"UPDATE fpr_records SET {column} = NULL WHERE hash(record_id) % 13 = {i}")
    con.close()
    return path


@pytest.mark.parametrize("slug", [*AREA_GRAPHS, "all"])
def test_the_agents_run_on_missing_and_non_finite_values(slug: str, rough_path: Path) -> None:
    out = _portfolio(rough_path) if slug == "all" else run(slug, rough_path)[0]
    reports = out["reports"].values() if slug == "all" else [out["report"]]
    for report in reports:
        assert report["headline"]
        assert report["ungrounded"] == []
        told = {k: v for k, v in report.items() if k != "evidence"}  # its SQL tests isnan
        assert "nan" not in json.dumps(told).lower().replace("financ", "")
