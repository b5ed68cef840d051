"""`finmatch app` (what `make app` runs): the agent endpoint and the dashboard together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_app_starts_an_endpoint_and_the_dashboard_and_stops_both(
    tmp_path: Path, seeded_path: Path
) -> None:
    service_port, app_port = free_port(), free_port()
    env = {
        **os.environ,
        "FINMATCH_HOME": str(tmp_path / "home"),
        "FINMATCH_WAREHOUSE": f"duckdb:///{seeded_path}",
        "FINMATCH_TRACING": "false",
    }
    env.pop("FINMATCH_SERVICE_URL", None)
    log = tmp_path / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "app",
         "--service-port", str(service_port), "--port", str(app_port)],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    service, dashboard = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{app_port}"
    deadline = time.monotonic() + 90
    while not (up(f"{service}/ready") and up(f"{dashboard}/_stcore/health")):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    assert f"FinMatch dashboard on {dashboard} (agent endpoint {service})" in log.read_text()

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not up(f"{service}/health") and not up(f"{dashboard}/_stcore/health")


def test_app_says_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "app", "--service-port", str(port),
             "--port", str(free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=90,
            env={**os.environ, "FINMATCH_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert done.returncode == 1
    assert (
        f"port {port} is taken on this machine; choose another with --service-port" in done.stderr
    )
