"""The agent endpoint over real HTTP: `finmatch serve` in a child process on 127.0.0.1.

Runs that must stop mid-way use `import:tests.graphs.scripted:gated`, a scripted model
standing in for a hosted LLM (which cannot run here): it waits at the model step until the
test creates a gate file.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent

from graphs.areas import OPTIMIZATION
from tests.conftest import Server
from tools.metrics import Filters, dashboard
from tools.warehouse import DuckDBWarehouse

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
GATED = "import:tests.graphs.scripted:gated"
DATA_STEPS = 4  # Optimization Opportunities runs four data steps before the model step


@pytest.fixture(scope="module")
def warehouse_file(seeded_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("svc-wh") / "fpr.duckdb"
    shutil.copy(seeded_path, path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, warehouse_file: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("svc"), warehouse_file)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def wait_for(client: httpx.Client, run_id: str, *statuses: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s")


def wait_file(path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def read_events(url: str, run_id: str, last: int | None = None) -> list[dict[str, Any]]:
    """Read a run's event stream to its end; return the events with their ids."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    out: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{url}/runs/{run_id}/events", headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif not line and event:
                out.append(event)
                event = {}
    return out


def test_health_docs_focus_areas_and_models(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    paths = {"/runs", "/runs/{run_id}/events", "/metrics", "/records", "/invocations", "/responses"}
    assert paths <= set(spec["paths"])
    areas = client.get("/focus-areas").json()
    assert [a["slug"] for a in areas] == [
        "overall-performance",
        "optimization-opportunities",
        "financial-impact",
        "strategic-recommendations",
    ]
    assert all(a["business_challenge"] and a["agent_solution"] and a["steps"] for a in areas)
    assert client.get("/models").json()[0]["name"] == "offline"


def test_a_run_from_start_to_report_with_its_event_stream(
    client: httpx.Client, server: Server
) -> None:
    created = client.post("/runs", json={"focus_area": "optimization-opportunities"})
    assert created.status_code == 202
    run_id = created.json()["id"]
    events = read_events(server.url, run_id)  # follows the run live until it ends
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "status" and events[-1]["event"] == "end"
    assert events[-1]["data"]["status"] == "succeeded"
    finished = [e["data"]["step"] for e in events if e["event"] == "step_finish"]
    assert len(finished) == 6
    run = client.get(f"/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["trace_id"]
    assert [s["step"] for s in run["steps"]] == finished
    assert all(s["detail"] for s in run["steps"])
    report = run["result"]["report"]
    assert report["focus_area"] == "optimization-opportunities" and report["findings"]
    # A client that reconnects gets what came after its last event; one that comes after
    # the end gets the whole story again.
    assert read_events(server.url, run_id, last=3) == events[3:]
    assert read_events(server.url, run_id) == events
    # One that reconnects with the `end` as its last event is done: the stream closes.
    assert read_events(server.url, run_id, last=events[-1]["id"]) == []


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_invocations_answers_like_a_serving_endpoint(client: httpx.Client) -> None:
    """The Responses contract: area and scope from the words, steps then the report."""
    body = {"input": [user("What is the financial impact for Retail customers?")]}
    answer = client.post("/invocations", json=body, headers={"x-mlflow-return-trace-id": "true"})
    assert answer.status_code == 200, answer.text
    out = ResponsesAgentResponse(**answer.json())
    custom = out.custom_outputs or {}
    assert custom["focus_area"] == "financial-impact"
    assert custom["filters"] == {"segment": "Retail"}
    assert out.metadata == {"trace_id": custom["trace_id"]} and custom["trace_id"]
    texts = [item["content"][0]["text"] for item in answer.json()["output"]]
    run = client.get(f"/runs/{custom['run_id']}").json()  # recorded like any other run
    assert run["status"] == "succeeded"
    steps = [f"financial-impact: {s['step']} — {s['detail']}" for s in run["steps"]]
    assert texts[:-1] == steps and len(steps) == 6
    assert texts[-1].startswith("# ") and "Retail" in texts[-1]
    assert 'Question asked: "What is the financial impact' in texts[-1]


def test_invocations_on_a_scope_with_no_records_answer_with_a_report(
    client: httpx.Client,
) -> None:
    body = {
        "input": [user("How are we doing?")],
        "custom_inputs": {"filters": {"segment": "Student", "date_from": "2030-01-01"}},
    }
    answer = client.post("/invocations", json=body)
    assert answer.status_code == 200, answer.text
    report = answer.json()["output"][-1]["content"][0]["text"]
    assert "No records match this scope" in report and "Widen it" in report


def test_responses_streams_each_step_then_the_report(client: httpx.Client) -> None:
    body = {
        "input": [user("How are we doing?")],
        "custom_inputs": {"focus_area": "overall-performance"},
        "stream": True,
    }
    chunks: list[Any] = []
    with client.stream("POST", "/responses", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    events = [ResponsesAgentStreamEvent(**json.loads(c)) for c in chunks[:-1]]
    assert {e.type for e in events} == {"response.output_item.done"}
    assert all(e.custom_outputs is None for e in events[:-1])
    last = events[-1].custom_outputs or {}
    assert last["focus_area"] == "overall-performance"
    run = client.get(f"/runs/{last['run_id']}").json()
    assert len(events) == len(run["steps"]) + 1


def test_a_failed_invocation_says_how_to_resume(client: httpx.Client) -> None:
    body = {
        "input": [user("overall performance")],
        "custom_inputs": {"model": "import:tests.graphs.scripted:failing"},
    }
    failed = client.post("/invocations", json=body)
    assert failed.status_code == 502
    detail = failed.json()["detail"]
    assert "ended failed" in detail and "serving endpoint returned 503" in detail
    assert "/resume continues it" in detail
    streamed = client.post("/invocations", json={**body, "stream": True})
    chunks = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]" and "ended failed" in json.loads(chunks[-2])["error"]


def test_cancel_then_resume_does_not_redo_finished_steps(
    client: httpx.Client, server: Server
) -> None:
    marker, gate = server.tmp / "marker", server.tmp / "gate"
    marker.unlink(missing_ok=True)
    gate.unlink(missing_ok=True)
    run_id = client.post(
        "/runs", json={"focus_area": "optimization-opportunities", "model": GATED}
    ).json()["id"]
    wait_file(marker)  # the run is at its model step
    cancelled = client.post(f"/runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert len(cancelled.json()["steps"]) == DATA_STEPS
    again = client.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]
    gate.write_text("open")
    assert client.post(f"/runs/{run_id}/resume").status_code == 202
    run = wait_for(client, run_id, "succeeded", "failed")
    assert run["status"] == "succeeded", run["error"]
    assert run["attempts"] == 2
    started = [
        e["data"]["step"] for e in read_events(server.url, run_id) if e["event"] == "step_start"
    ]
    assert len(started) == len(set(started)) + 1  # only the model step started twice
    assert client.post(f"/runs/{run_id}/resume").status_code == 409


def test_history_filters_and_pages(client: httpx.Client) -> None:
    since = datetime.datetime.now(datetime.UTC).isoformat()  # other tests' runs came before
    for focus in ("financial-impact", "financial-impact", "strategic-recommendations"):
        run_id = client.post("/runs", json={"focus_area": focus}).json()["id"]
        wait_for(client, run_id, "succeeded")
    mine = {"focus_area": "financial-impact", "since": since}
    page = client.get("/runs", params={**mine, "limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = client.get("/runs", params={**mine, "cursor": page["next_cursor"]}).json()
    ids = [r["id"] for r in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == 2
    assert rest["next_cursor"] is None
    succeeded = client.get("/runs", params={"status": "succeeded", "limit": 200}).json()["items"]
    assert all(r["status"] == "succeeded" for r in succeeded)
    created = [r["created_at"] for r in succeeded]
    assert created == sorted(created, reverse=True)
    future = client.get("/runs", params={"since": "2999-01-01T00:00:00"}).json()
    assert future["items"] == []


def test_metrics_and_records(client: httpx.Client, warehouse_file: Path) -> None:
    body = client.get("/metrics", params={"segment": "Retail"}).json()
    assert body["scope"] == "segment = Retail"
    wh = DuckDBWarehouse(warehouse_file)
    try:
        direct = dashboard(wh, Filters(segment="Retail"))
    finally:
        wh.close()
    for name in ("kpis", "distributions"):  # parallel float sums may differ in the last bits
        assert len(body[name]["rows"]) == len(direct[name].rows)
        for got, want in zip(body[name]["rows"], direct[name].rows, strict=True):
            assert got == pytest.approx(want)
    # The service's warehouse file cannot change while it is open: asked again, the
    # metrics come from the results it kept.
    again = client.get("/metrics", params={"segment": "Retail"}).json()
    for name in ("kpis", "distributions"):
        assert again[name]["cached"] and again[name]["rows"] == body[name]["rows"]
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"page_size": 200}
        if after:
            params["after"] = after
        page = client.get("/records", params=params).json()
        seen += [r["record_id"] for r in page["records"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 750 and seen == sorted(seen)
    retail = client.get("/records", params={"segment": "Retail", "page_size": 5}).json()
    assert {r["customer_segment"] for r in retail["records"]} == {"Retail"}


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "message"),
    [
        ("post", "/runs", {"focus_area": "growth"}, 422, "choose one of: overall-performance"),
        ("post", "/runs", {"focus_area": "all", "model": "gpt-9"}, 422, "available: offline"),
        (
            "post",
            "/runs",
            {"focus_area": "all", "filters": {"segment": "Martians"}},
            422,
            "Unknown segment 'Martians'. The data has: 'Commercial', 'Retail'",
        ),
        (
            "post",
            "/runs",
            {"focus_area": "all", "filters": {"date_from": "2025-02-01", "date_to": "2025-01-01"}},
            422,
            "is after date_to",
        ),
        ("post", "/runs", {"focus": "all"}, 422, "focus_area: Field required"),
        (  # was 202: a number was read as seconds since 1970
            "post",
            "/runs",
            {"focus_area": "all", "filters": {"date_from": 0}},
            422,
            "filters.date_from: Value error, a date is written YYYY-MM-DD; got 0",
        ),
        (
            "post",
            "/runs",
            {"focus_area": "all", "filters": {"date_to": "2024-01-01T12:00:00"}},
            422,
            "a date is written YYYY-MM-DD; got '2024-01-01T12:00:00'",
        ),
        ("get", "/metrics?date_from=0", None, 422, "date_from: Value error, a date is written"),
        ("get", "/records?date_to=86400", None, 422, "YYYY-MM-DD; got '86400'"),
        (  # was 200: an unknown parameter was ignored, so the whole table was measured
            "get",
            "/metrics?segmnt=Retail",
            None,
            422,
            "Unknown query parameter 'segmnt'; GET /metrics takes: segment, lifecycle_stage",
        ),
        ("get", "/runs?statuss=failed", None, 422, "Unknown query parameter 'statuss'"),
        (  # was 200: seconds since 1970
            "get",
            "/runs?until=0",
            None,
            422,
            "until: Value error, a date-time is written YYYY-MM-DDTHH:MM:SSZ; got '0'",
        ),
        ("get", "/records?=1", None, 422, "Unknown query parameter ''"),
        ("post", "/runs?focus_area=all", {"focus_area": "all"}, 422, "takes none"),
        ("get", "/records?page_size=0", None, 422, "page_size: Input should be greater"),
        ("get", "/records?page_size=201", None, 422, "page_size: Input should be less"),
        ("get", "/metrics?product_type=Yacht", None, 422, "Unknown product type 'Yacht'"),
        ("get", "/runs?limit=0", None, 422, "limit: Input should be greater"),
        ("get", "/runs?cursor=nonsense", None, 422, "is not a next_cursor"),
        ("get", "/runs/nope", None, 404, "No run nope"),
        # were "Not Found" and "Method Not Allowed"
        ("get", "/nowhere", None, 404, "No route GET /nowhere; the routes are listed at /docs"),
        ("delete", "/runs", None, 405, "DELETE is not allowed on /runs; it takes GET, POST"),
        ("post", "/runs/nope/cancel", None, 404, "No run nope"),
        ("post", "/runs/nope/resume", None, 404, "No run nope"),
        ("get", "/runs/nope/events", None, 404, "No run nope"),
        ("post", "/invocations", {"input": []}, 200, ""),  # no words: the four areas run
        ("post", "/invocations", {"custom_inputs": {}}, 422, "input: Field required"),
        (
            "post",
            "/invocations",
            {"input": [], "custom_inputs": {"focus_area": "growth"}},
            422,
            "Unknown focus area 'growth'",
        ),
        (
            "post",
            "/responses",
            {"input": [], "custom_inputs": {"filters": {"segment": "Martians"}}},
            422,
            "Unknown segment 'Martians'",
        ),
        (
            "post",
            "/responses",
            {"input": [], "custom_inputs": {"filters": {"colour": "red"}}},
            422,
            "colour",
        ),
        # was 200: 1 was read as true, "5" as 5, though the schema says boolean, integer
        ("post", "/invocations", {"input": [], "stream": 1}, 422, "stream: Input should be a"),
        (
            "post",
            "/responses",
            {"input": [], "max_output_tokens": "5"},
            422,
            "max_output_tokens: Input should be a valid integer",
        ),
        (  # was 500: a number is no filter object
            "post",
            "/invocations",
            {"input": [], "custom_inputs": {"filters": 5}},
            422,
            "custom_inputs.filters must be an object",
        ),
        (  # was 422 with "dictionary update sequence element #0 has length 1"
            "post",
            "/responses",
            {"input": [], "custom_inputs": {"filters": "Retail"}},
            422,
            "custom_inputs.filters must be an object",
        ),
        (
            "post",
            "/invocations",
            {"input": [], "custom_inputs": {"focus_area": ["all"]}},
            422,
            "Unknown focus area ['all']",
        ),
        (
            "post",
            "/invocations",
            {"input": [], "custom_inputs": {"filters": {"date_from": 0}}},  # was 200
            422,
            "custom_inputs.filters: date_from: Value error, a date is written YYYY-MM-DD; got 0",
        ),
    ],
)
def test_bad_requests_get_clear_problems(
    client: httpx.Client, method: str, path: str, payload: Any, status: int, message: str
) -> None:
    response = client.request(method, path, json=payload)
    assert response.status_code == status
    if status == 200:
        return
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and message in body["detail"], body
    assert "Traceback" not in response.text


def test_a_problem_says_what_was_wrong_in_one_sentence(client: httpx.Client) -> None:
    """Was pydantic's whole report: "1 validation error for Filters ... errors.pydantic.dev"."""
    filters = {"date_from": "2025-02-01", "date_to": "2025-01-01"}
    for path, body in (
        ("/runs", {"focus_area": "all", "filters": filters}),
        ("/invocations", {"input": [], "custom_inputs": {"filters": filters}}),
    ):
        detail = client.post(path, json=body).json()["detail"]
        assert "date_from (2025-02-01) is after date_to (2025-01-01); swap them" in detail
        assert "validation error" not in detail and "pydantic" not in detail, detail
        assert "\n" not in detail


@pytest.mark.parametrize("last", ["-1", "99999999999999999999999", "1e3", "+3"])
def test_a_last_event_id_out_of_range_is_refused(client: httpx.Client, last: str) -> None:
    run = client.post("/runs", json={"focus_area": "overall-performance"}).json()
    response = client.get(f"/runs/{run['id']}/events", headers={"Last-Event-ID": last})
    assert response.status_code == 400, response.text  # was 500 (or a stream) for some
    assert "Last-Event-ID must be an event number from 0" in response.json()["detail"]


def test_a_keyless_service_answers_only_to_its_own_host_names(server: Server) -> None:
    """A page elsewhere cannot reach a loopback service through a name it controls."""
    port = server.url.rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example"):
        response = httpx.get(f"{server.url}/models", headers={"Host": host})
        assert response.status_code == 400, host  # was 200: DNS rebinding read the data
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert httpx.get(f"{server.url}/models", headers={"Host": host}).status_code == 200


def test_a_method_a_path_does_not_take_gets_the_methods_it_does(client: httpx.Client) -> None:
    response = client.delete("/runs")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"  # was "POST": the first route's only
    assert response.headers["content-type"] == "application/problem+json"


def test_malformed_and_huge_bodies(client: httpx.Client) -> None:
    bad = client.post("/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["detail"]
    latin = client.post(
        "/runs", content=b'{"focus_area": "\xe9"}', headers={"content-type": "application/json"}
    )
    assert latin.status_code == 400  # was "There was an error parsing the body"
    assert latin.headers["content-type"] == "application/problem+json"
    assert latin.json()["detail"] == (
        "The body could not be read: 'utf-8' codec can't decode byte 0xe9 in position 16: "
        "invalid continuation byte. Send a JSON object encoded in UTF-8."
    )
    huge = client.post("/runs", json={"focus_area": "all", "question": "x" * 200_000})
    assert huge.status_code == 413
    assert "larger than 65536 bytes" in huge.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"focus_area": "all", "question": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    chunked = client.post("/runs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.headers["content-type"] == "application/problem+json"


def test_without_a_warehouse_the_data_routes_say_so(tmp_path: Path) -> None:
    """Every route that reads the data answers 503 with the reason, never 500."""
    srv = Server(tmp_path, tmp_path / "absent.duckdb", FINMATCH_TRACING="false")
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for method, path, body in [
                ("get", "/ready", None),
                ("get", "/metrics", None),  # was 500
                ("get", "/records", None),  # was 500
                ("post", "/runs", {"focus_area": "all"}),  # was 500
                ("post", "/invocations", {"input": []}),  # was 500
            ]:
                response = c.request(method, path, json=body)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                detail = response.json()["detail"]
                assert f"No warehouse file at {tmp_path / 'absent.duckdb'}" in detail, detail
                assert "finmatch seed" in detail
    finally:
        srv.stop()


def test_restart_mid_run_then_resume(tmp_path: Path, warehouse_file: Path) -> None:
    """SIGKILL the service at the model step; the next one reports the run and resumes it."""
    srv = Server(tmp_path, warehouse_file, FINMATCH_TRACING="false")
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            run_id = c.post(
                "/runs", json={"focus_area": "optimization-opportunities", "model": GATED}
            ).json()["id"]
            wait_file(tmp_path / "marker")
        srv.stop(signal.SIGKILL)
        # Events still on their way to the log when the process died are lost: say the
        # last finished step's was. Its checkpoint holds it, so the history must too.
        with sqlite3.connect(tmp_path / "home" / "service.sqlite") as db:
            db.execute(
                "DELETE FROM events WHERE run_id = ? AND seq = (SELECT max(seq) FROM events "
                "WHERE run_id = ? AND type = 'step_finish')",
                (run_id, run_id),
            )
        srv.start()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            run = c.get(f"/runs/{run_id}").json()
            assert run["status"] == "failed"
            assert "POST /runs/" in run["error"] and "/resume" in run["error"]
            assert len(run["steps"]) == DATA_STEPS - 1
            history = c.get("/runs").json()["items"]
            assert [r["id"] for r in history] == [run_id]
            (tmp_path / "gate").write_text("open")
            assert c.post(f"/runs/{run_id}/resume").status_code == 202
            run = wait_for(c, run_id, "succeeded", "failed")
            assert run["status"] == "succeeded", run["error"]
            started = [
                e["data"]["step"]
                for e in read_events(srv.url, run_id)
                if e["event"] == "step_start"
            ]
            assert len(started) == len(set(started)) + 1  # only the model step ran twice
            steps = [s["step"] for s in run["steps"]]
            assert steps == [s.name for s in OPTIMIZATION.steps]  # each once, none lost
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, warehouse_file: Path) -> Iterator[Server]:
    """A server with two API keys."""
    srv = Server(
        tmp_path_factory.mktemp("keyed"), warehouse_file, FINMATCH_API_KEYS="key-one, key-two"
    )
    srv.start()
    yield srv
    srv.stop()


def unauthorized(response: httpx.Response) -> dict[str, Any]:
    """Assert `response` is the service's 401 problem; return its body."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == 401
    assert "Authorization: Bearer <key>" in body["detail"]
    return body


def test_api_keys(keyed: Server) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        missing = unauthorized(c.get("/models"))
        assert "no Authorization header" in missing["detail"]
        wrong = unauthorized(c.get("/models", headers={"Authorization": "Bearer nope"}))
        assert "not one of this service's keys" in wrong["detail"]
        assert "nope" not in wrong["detail"]  # a key sent is never echoed
        basic = unauthorized(c.get("/models", headers={"Authorization": "Basic key-two"}))
        assert "'Basic'" in basic["detail"]
        for bare in ("key-one-typed-without-bearer", "sk-live-0123456789abcdef x"):
            # was echoed: "uses the 'key-one-typed-without-bearer' scheme"
            told = unauthorized(c.get("/models", headers={"Authorization": bare}))
            assert bare.split()[0] not in told["detail"], told
        ok = c.get("/models", headers={"Authorization": "Bearer key-two"})
        assert ok.status_code == 200
        assert c.get("/models", headers={"Authorization": "bearer key-one"}).status_code == 200
        unauthorized(c.post("/runs", json={"focus_area": "all"}))


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_api_keys_guard_the_docs(keyed: Server, path: str) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        unauthorized(c.get(path))
        unauthorized(c.get(path, headers={"Authorization": "Bearer nope"}))
        assert c.get(path, headers={"Authorization": "Bearer key-one"}).status_code == 200


def test_the_schema_of_a_keyed_service_says_which_routes_need_the_key(keyed: Server) -> None:
    key = {"Authorization": "Bearer key-one"}
    spec = httpx.get(f"{keyed.url}/openapi.json", headers=key, timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the service's FINMATCH_API_KEYS",
    }
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path == "/health":
                assert "security" not in operation and "401" not in operation["responses"]
            else:
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in operation["responses"], path


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),  # was 422: the body was parsed first
        (b'{"focus": "all"}', "application/json"),  # parsed, then invalid
        (b'{"focus_area": "\xff"}', "application/json"),  # was 400: not UTF-8
        (b"x" * 100_000, "application/json"),  # was 413: over the body limit
        (b"focus_area=all", "application/x-www-form-urlencoded"),
    ],
)
def test_the_key_is_checked_before_the_body_is_read(
    keyed: Server, content: bytes, content_type: str
) -> None:
    for path in ("/runs", "/invocations", "/responses"):
        response = httpx.post(
            f"{keyed.url}{path}", content=content, headers={"content-type": content_type}
        )
        unauthorized(response)


def test_unknown_paths_need_the_key_too(keyed: Server) -> None:
    """Without the key the service tells nothing, not even which paths exist."""
    unauthorized(httpx.get(f"{keyed.url}/nowhere"))
    unauthorized(httpx.delete(f"{keyed.url}/runs"))
    key = {"Authorization": "Bearer key-two"}
    assert httpx.get(f"{keyed.url}/nowhere", headers=key).status_code == 404


def test_serve_refuses_other_addresses_without_a_key(tmp_path: Path) -> None:
    env = {**os.environ, "FINMATCH_HOME": str(tmp_path), "FINMATCH_API_KEYS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Refusing to listen on 0.0.0.0 without an API key" in done.stderr
    assert "FINMATCH_API_KEYS" in done.stderr
