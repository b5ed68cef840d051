"""Traces of the agent endpoint's runs, over real HTTP with a real MLflow store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from graphs.areas import FINANCIAL
from tests.conftest import ROOT, Server, free_port

pytestmark = pytest.mark.server


def test_concurrent_runs_of_the_service_each_leave_a_whole_trace(
    tmp_path: Path, own_warehouse: Path
) -> None:
    warehouse = own_warehouse
    srv = Server(tmp_path, warehouse, FINMATCH_TRACING="true")
    srv.start()

    async def eight() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            posted = await asyncio.gather(
                *(c.post("/runs", json={"focus_area": "financial-impact"}) for _ in range(8))
            )
            ids = [p.json()["id"] for p in posted]
            deadline = time.monotonic() + 120
            while True:
                runs = [(await c.get(f"/runs/{i}")).json() for i in ids]
                # A trace id the writer gives late is recorded when it comes.
                if all(r["status"] == "succeeded" and r["trace_id"] for r in runs):
                    return runs
                assert time.monotonic() < deadline, [r["status"] for r in runs]
                await asyncio.sleep(0.2)

    try:
        runs = asyncio.run(eight())
    finally:
        srv.stop()  # the service hands the writer what is left, and it finishes
    assert all(r["trace_id"].startswith("tr-") for r in runs)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    for r in runs:
        trace = mlflow.get_trace(r["trace_id"])
        assert trace is not None and trace.info.state == "OK"
        names = [s.name for s in trace.data.spans]
        assert all(step.name in names for step in FINANCIAL.steps), names
        assert trace.info.request_metadata["mlflow.trace.session"] == r["thread_id"]
        assert trace.data.spans[0].outputs["headline"] == r["result"]["report"]["headline"]


def _writer_pids(parent: int) -> list[int]:
    found = []
    for pid in Path("/proc").iterdir():
        try:
            stat = (pid / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == parent and b"service.trace_writer" in (pid / "cmdline").read_bytes():
                found.append(int(pid.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_service_whose_trace_writer_died_starts_another(
    tmp_path: Path, own_warehouse: Path
) -> None:
    import os
    import signal

    srv = Server(tmp_path, own_warehouse, FINMATCH_TRACING="true")
    srv.start()
    try:
        assert srv.proc is not None
        with httpx.Client(base_url=srv.url, timeout=60) as c:

            def run() -> dict[str, Any]:
                run_id = c.post("/runs", json={"focus_area": "financial-impact"}).json()["id"]
                deadline = time.monotonic() + 120
                while not ((r := c.get(f"/runs/{run_id}").json())["status"] == "succeeded"
                           and r["trace_id"]):  # fmt: skip
                    assert time.monotonic() < deadline, r
                    time.sleep(0.1)
                return r

            first = run()
            (writer,) = _writer_pids(srv.proc.pid)
            os.kill(writer, signal.SIGKILL)
            while (
                Path(f"/proc/{writer}").exists()
                and "Z" not in Path(f"/proc/{writer}/stat").read_text().rsplit(")", 1)[1].split()[0]
            ):
                time.sleep(0.05)
            second = run()
    finally:
        srv.stop()
    assert first["trace_id"] and second["trace_id"] and first["trace_id"] != second["trace_id"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    assert mlflow.get_trace(second["trace_id"]).info.state == "OK"


def test_a_command_whose_tracking_server_is_down_ends_with_a_warning(
    tmp_path: Path, own_warehouse: Path
) -> None:
    """Was: the report, then 121 s waiting for MLflow's retries (7, of 120 s each)."""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        **os.environ,
        "FINMATCH_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": down,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [sys.executable, "-m", "service.cli", "analyze", "--focus", "financial-impact"]
    done = subprocess.run(
        [*command, "--warehouse", f"duckdb:///{own_warehouse}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Financial Impact" in done.stdout
    assert f"warning: the trace was not recorded in {down}" in done.stderr, done.stderr
    assert "could not be opened" in done.stderr and "leaked" not in done.stderr


def test_a_service_whose_tracking_server_is_down_keeps_running_runs(
    tmp_path: Path, own_warehouse: Path
) -> None:
    """Was: each run held its place 30 s after its report waiting for a trace id, so with
    one place four runs took two minutes."""
    srv = Server(
        tmp_path, own_warehouse, FINMATCH_TRACING="true", FINMATCH_MAX_CONCURRENT_RUNS="1",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            ids = [c.post("/runs", json={"focus_area": "financial-impact"}).json()["id"]]
            ids += [c.post("/runs", json={"focus_area": "financial-impact"}).json()["id"]]
            ids += [c.post("/runs", json={"focus_area": "financial-impact"}).json()["id"]]
            ids += [c.post("/runs", json={"focus_area": "financial-impact"}).json()["id"]]
            deadline = time.monotonic() + 45
            while (runs := [c.get(f"/runs/{i}").json() for i in ids]) and not all(
                r["status"] == "succeeded" for r in runs
            ):
                assert time.monotonic() < deadline, [r["status"] for r in runs]
                time.sleep(0.2)
    finally:
        srv.stop()
    assert [r["trace_id"] for r in runs] == ["", "", "", ""]
