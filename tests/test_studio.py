"""`langgraph dev` serves the five graphs of langgraph.json; the SDK client runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from tests.conftest import free_port

pytestmark = [pytest.mark.studio, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    home = tmp_path_factory.mktemp("studio")
    env = {
        **os.environ,
        "FINMATCH_HOME": str(home),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
        "LANGSMITH_TRACING": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "langgraph"),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(ROOT / "langgraph.json"),
        ],
        cwd=home,  # the in-memory server keeps its state in ./.langgraph_api
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "langgraph dev did not start in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_five_graphs_are_served(server: str) -> None:
    async def graphs() -> set[str]:
        client = get_client(url=server)
        return {a["graph_id"] for a in await client.assistants.search(limit=20)}

    assert asyncio.run(graphs()) == {
        "overall-performance",
        "optimization-opportunities",
        "financial-impact",
        "strategic-recommendations",
        "portfolio",
    }


def test_a_graph_runs_through_the_sdk_with_live_steps(server: str, large_path: Path) -> None:
    async def go() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        client = get_client(url=server)
        thread = await client.threads.create()
        events: list[dict[str, Any]] = []
        async for part in client.runs.stream(
            thread["thread_id"],
            "optimization-opportunities",
            input={"question": "Where does acceptance lag?"},
            context={"warehouse": f"duckdb:///{large_path}", "segment": "Small Business"},
            stream_mode=["custom", "updates"],
        ):
            if part.event == "custom":
                events.append(part.data)
            elif part.event == "updates":  # a finished step's record is part of its update
                events += [
                    {"type": "step_finish", **record}
                    for update in part.data.values()
                    for record in (update or {}).get("steps", [])
                ]
        state = await client.threads.get_state(thread["thread_id"])
        return events, state["values"]

    events, values = asyncio.run(go())
    started = [e["step"] for e in events if e["type"] == "step_start"]
    finished = [e["step"] for e in events if e["type"] == "step_finish"]
    assert finished == started and len(finished) == 6
    assert finished[0] == "Banking Optimization Data Preparation"
    report = values["report"]
    assert report["focus_area"] == "optimization-opportunities"
    assert "Small Business" in report["scope"]
    assert "Where does acceptance lag?" in report["sections"][0]["body"]


def test_studio_gets_the_input_and_output_schemas_of_every_graph(server: str) -> None:
    async def schemas() -> dict[str, Any]:
        client = get_client(url=server)
        found = {}
        for assistant in await client.assistants.search(limit=20):
            found[assistant["graph_id"]] = await client.assistants.get_schemas(
                assistant["assistant_id"]
            )
        return found

    found = asyncio.run(schemas())
    assert len(found) == 5
    for graph_id, schema in found.items():
        assert schema["input_schema"] is not None, graph_id
        assert "question" in schema["input_schema"]["properties"], graph_id
        assert schema["output_schema"] is not None, graph_id
        output = schema["output_schema"]["properties"]
        assert ("reports" if graph_id == "portfolio" else "report") in output, graph_id
        assert "warehouse" in schema["context_schema"]["properties"], graph_id
