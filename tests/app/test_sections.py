"""The dashboard's four sections with Streamlit's AppTest against a real agent endpoint.

`finmatch serve` runs on 127.0.0.1 in a child process over a seeded DuckDB file. Runs that
must stop or fail use the scripted models of tests/graphs/scripted.py, standing in for a
hosted LLM (which cannot run here): `gated` waits at the model step until the test creates
its gate file, `failing` raises there. The service lists them through
FINMATCH_IMPORT_MODELS, so the app's model picker offers them like any configured model.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import FAILING, GATED
from tests.conftest import ROOT, Server, free_port
from tools.metrics import Filters, dashboard
from tools.warehouse import DuckDBWarehouse

pytestmark = pytest.mark.server

MAIN = str(ROOT / "app" / "main.py")
OPT = "optimization-opportunities"


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def app(server: Server, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("FINMATCH_SERVICE_URL", server.url)
    monkeypatch.delenv("FINMATCH_SERVICE_API_KEY", raising=False)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    return at


def page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"sections/{name}.py").run()
    assert not at.exception, at.exception
    return at


def until(at: AppTest, check: Callable[[AppTest], bool], timeout: float = 60) -> AppTest:
    """Rerun the app (as the page's live fragment does) until `check` holds."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception
        if check(at):
            return at
        if time.monotonic() > deadline:
            shown = [m.value for m in at.markdown] + [e.value for e in at.error]
            raise AssertionError(f"not reached in {timeout} s; the page shows {shown}")
        time.sleep(0.1)  # the page's own redraw interval is 0.5 s


def texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def step_lines(at: AppTest) -> list[str]:
    return [t for t in texts(at) if t.startswith(":material/check_circle: **") and "** — " in t]


def has_report(at: AppTest) -> bool:
    return any(s.value.startswith("Finished in") for s in at.success)


def wait_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# -- Metrics ---------------------------------------------------------------------------
def test_metrics_show_the_warehouse_numbers_and_follow_the_filters(
    app: AppTest, warehouse_file: Path
) -> None:
    with closing(DuckDBWarehouse(warehouse_file)) as wh:
        everything = dashboard(wh)["kpis"].rows[0]
        retail = dashboard(wh, Filters(segment="Retail"))["kpis"].rows[0]
    at = page(app, "metrics")
    shown = {m.label: m.value for m in at.metric}
    assert shown["Product sales"] == f"${everything['total_product_sales']:,.0f}"
    assert shown["Avg recommendation score"] == f"{everything['avg_recommendation_score']:.3f}"
    assert shown["Transactions"] == f"{everything['total_transaction_count']:,}"
    assert shown["Avg account balance"] == f"${everything['avg_account_balance']:,.2f}"
    charts = at.get("vega_lite_chart")
    assert len(charts) == 5  # status, lifecycle, segments, affinity, product types
    titles = texts(at)
    for title in ("Recommendation status", "Product affinity", "Customer lifecycle stage",
                  "Top product types", "Top customer segments"):  # fmt: skip
        assert f"**{title}**" in titles
    assert any("FROM" in c.value for c in at.code)  # the SQL behind the numbers

    at.selectbox(key="metrics_segment").set_value("Retail").run()
    shown = {m.label: m.value for m in at.metric}
    assert shown["Product sales"] == f"${retail['total_product_sales']:,.0f}"
    assert retail["records"] < everything["records"]
    assert any(c.value.startswith("Scope: segment = Retail") for c in at.caption)


def test_metrics_say_when_no_record_matches(app: AppTest) -> None:
    at = page(app, "metrics")
    at.date_input(key="metrics_date_from").set_value(datetime.date(2001, 1, 1))
    at.date_input(key="metrics_date_to").set_value(datetime.date(2001, 1, 31)).run()
    assert not at.exception
    assert any("No records match this scope" in i.value for i in at.info)


# -- AI Insights -----------------------------------------------------------------------
def test_a_run_starts_shows_each_step_with_its_numbers_then_the_report(
    app: AppTest, api: httpx.Client
) -> None:
    area = next(a for a in api.get("/focus-areas").json() if a["slug"] == OPT)
    at = page(app, "ai_insights")
    at.selectbox(key="insights_focus_area").set_value(OPT).run()
    assert f"**Business challenge**\n\n{area['business_challenge']}" in texts(at)
    assert f"**Agent solution**\n\n{area['agent_solution']}" in texts(at)
    assert at.selectbox(key="insights_model").options[0].startswith("offline")
    at.button(key="insights_start").click().run()
    until(at, has_report)

    run_id = at.session_state["insights_run"]["id"]
    run = api.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["focus_area"] == OPT
    lines = step_lines(at)
    assert len(lines) == len(area["steps"]) == len(run["steps"])
    for line, step in zip(lines, run["steps"], strict=True):  # each with its real detail line
        assert line == f":material/check_circle: **{step['step']}** — {step['detail']}"
    report = run["result"]["report"]
    assert report["title"] in [s.value for s in at.subheader]
    assert f"**{report['headline']}**" in texts(at)
    evidence_sql = [c.value for c in at.code]
    assert [e["sql"] for e in report["evidence"]] == evidence_sql
    assert at.button(key="insights_start").disabled is False
    assert at.button(key="insights_resume").disabled is True


def test_all_four_areas_show_every_step_and_the_summary(app: AppTest) -> None:
    at = page(app, "ai_insights")
    at.selectbox(key="insights_focus_area").set_value("all").run()
    at.button(key="insights_start").click().run()
    until(at, has_report)
    total = len(at.session_state["insights_run"]["steps"])
    assert total == 25 == len(step_lines(at))  # 4 areas' 23 steps, preparation, summary
    assert at.get("progress")[0].proto.text == f"{total} of {total} steps · succeeded"
    assert "FinMatch portfolio — executive summary" in [s.value for s in at.subheader]
    assert len(at.tabs) == 4


def test_stop_cancels_the_run_and_resume_finishes_it_without_redoing_steps(
    app: AppTest, api: httpx.Client, server: Server
) -> None:
    gate, marker = server.tmp / "gate", server.tmp / "marker"
    gate.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    at = page(app, "ai_insights")
    at.selectbox(key="insights_focus_area").set_value(OPT)
    at.selectbox(key="insights_model").set_value(GATED).run()
    at.button(key="insights_start").click().run()
    wait_file(marker)  # the run waits at its model step
    until(at, lambda at: len(step_lines(at)) == 4)
    assert any("running" in t for t in texts(at))
    run_id = at.session_state["insights_run"]["id"]

    at.button(key="insights_stop").click().run()
    until(at, lambda at: bool(at.warning))
    assert "Stopped after 4 finished steps" in at.warning[0].value
    assert api.get(f"/runs/{run_id}").json()["status"] == "cancelled"
    assert at.button(key="insights_resume").disabled is False

    gate.write_text("open")
    at.button(key="insights_resume").click().run()
    until(at, has_report)
    run = api.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["attempts"] == 2
    assert len(step_lines(at)) == 6 == len(run["steps"])  # the four were not run again
    assert len({s["step"] for s in run["steps"]}) == 6


def test_a_failed_run_is_said_plainly_and_can_be_resumed(app: AppTest) -> None:
    at = page(app, "ai_insights")
    at.selectbox(key="insights_focus_area").set_value("financial-impact")
    at.selectbox(key="insights_model").set_value(FAILING).run()
    at.button(key="insights_start").click().run()
    until(at, lambda at: bool(at.error))
    assert at.error[0].value.startswith("**The run failed:**")
    assert "Resume continues from the step that failed" in at.error[0].value
    run_id = at.session_state["insights_run"]["id"]
    at.button(key="insights_resume").click().run()  # fails again, at the same step
    until(at, lambda at: bool(at.error) and at.session_state["insights_run"]["attempts"] == 2)
    assert at.error[0].value.startswith("**The run failed:**")
    assert at.session_state["insights_run"]["id"] == run_id
    # The app keeps working: another section still answers.
    page(at, "metrics")
    assert at.metric


def test_a_failed_run_resumed_from_the_history_is_followed_in_ai_insights(
    app: AppTest, api: httpx.Client
) -> None:
    run_id = api.post("/runs", json={"focus_area": "financial-impact", "model": FAILING}).json()[
        "id"
    ]
    wait_status(api, run_id, "failed")
    at = page(app, "history")
    at.selectbox(key="history_open").set_value(run_id).run()
    assert at.error[0].value.startswith("The run failed:")
    at.button(key=f"history_{run_id}_resume").click().run()
    assert at.title[0].value == "AI Insights"  # the click switched pages
    assert at.session_state["insights_run"]["id"] == run_id
    # AppTest's next run goes back to the page it was told; stay on AI Insights.
    page(at, "ai_insights")
    until(at, lambda at: any(e.value.startswith("**The run failed:**") for e in at.error))
    assert api.get(f"/runs/{run_id}").json()["attempts"] == 2


# -- Insights History ------------------------------------------------------------------
def wait_status(api: httpx.Client, run_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        run = api.get(f"/runs/{run_id}").json()
        if run["status"] == status:
            return dict(run)
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def test_history_lists_runs_opens_a_report_and_compares_two(
    app: AppTest, api: httpx.Client
) -> None:
    ids = []
    for segment in ("Retail", "Student"):
        body = {"focus_area": "financial-impact", "filters": {"segment": segment}}
        ids.append(api.post("/runs", json=body).json()["id"])
    reports = [wait_status(api, i, "succeeded")["result"]["report"] for i in ids]

    at = page(app, "history")
    at.selectbox(key="history_focus").set_value("financial-impact")
    at.selectbox(key="history_status").set_value("succeeded").run()
    table = at.dataframe[0].value
    assert set(ids) <= set(table["run"])
    assert set(table["focus area"]) == {"financial-impact"}
    assert set(table["status"]) == {"succeeded"}

    at.selectbox(key="history_open").set_value(ids[0]).run()
    assert reports[0]["headline"] in " ".join(texts(at))
    assert any("segment = Retail" in t for t in texts(at))

    at.multiselect(key="history_compare").set_value(ids).run()
    assert not at.exception
    # Side by side: each report in a column of its own, with its own scope.
    for report, segment in zip(reports, ("Retail", "Student"), strict=True):
        holders = [
            c for c in at.columns if any(f"Scope: {report['scope']}" in x.value for x in c.caption)
        ]
        assert len(holders) == 1 and f"segment = {segment}" in report["scope"]
        assert f"**{report['headline']}**" in [m.value for m in holders[0].markdown]


def test_history_pages_newest_first(app: AppTest, api: httpx.Client) -> None:
    for _ in range(21):  # more than a page of the history
        api.post("/runs", json={"focus_area": "overall-performance"})
    at = page(app, "history")
    first = list(at.dataframe[0].value["run"])
    assert len(first) == 20
    at.button(key="history_older").click().run()
    second = list(at.dataframe[0].value["run"])
    assert second and not set(first) & set(second)
    at.button(key="history_newer").click().run()
    assert list(at.dataframe[0].value["run"])[:5] == first[:5]


# -- Data Explorer ---------------------------------------------------------------------
def test_explorer_pages_through_the_records_on_the_server(
    app: AppTest, warehouse_file: Path
) -> None:
    with closing(DuckDBWarehouse(warehouse_file)) as wh:
        ordered = [r[0] for r in wh.run("SELECT record_id FROM fpr_records ORDER BY 1").rows]
        students = wh.run(
            "SELECT count(*) FROM fpr_records WHERE customer_segment = 'Student'"
        ).rows[0][0]
    at = page(app, "explorer")
    at.selectbox(key="explorer_page_size").set_value(25).run()
    assert list(at.dataframe[0].value["record_id"]) == ordered[:25]
    at.button(key="explorer_next").click().run()
    assert list(at.dataframe[0].value["record_id"]) == ordered[25:50]
    assert at.caption[0].value.startswith("Page 2 · records 26–50")
    at.button(key="explorer_previous").click().run()
    assert list(at.dataframe[0].value["record_id"]) == ordered[:25]
    assert at.button(key="explorer_previous").disabled

    at.selectbox(key="explorer_segment").set_value("Student")
    at.selectbox(key="explorer_page_size").set_value(200).run()
    frame = at.dataframe[0].value
    assert set(frame["customer_segment"]) == {"Student"} and len(frame) == min(200, students)
    assert at.caption[0].value.startswith("Page 1 ·")


# -- The service is down -----------------------------------------------------------------
def test_every_section_says_plainly_that_the_service_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FINMATCH_SERVICE_URL", url)
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    for name in ("metrics", "ai_insights", "history", "explorer"):
        page(at, name)
        assert len(at.error) == 1, name
        assert "The agent endpoint is not reachable" in at.error[0].value
        assert url in at.error[0].value and "finmatch serve" in at.error[0].value
        assert any("is not answering" in c.value for c in at.sidebar.caption)
