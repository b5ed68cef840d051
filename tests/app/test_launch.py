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
import pytest

from tests.conftest import ROOT, free_port


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.server
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


@pytest.mark.server
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


def test_app_refuses_other_addresses_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    monkeypatch.delenv("FINMATCH_API_KEYS", raising=False)
    assert main(["app", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "Refusing to listen on 0.0.0.0 without an API key" in capsys.readouterr().err


def test_a_port_a_server_just_left_counts_as_free() -> None:
    """After a clean stop the port is in TIME_WAIT: a server can bind it again at once
    (with SO_REUSEADDR, as uvicorn does), so the check must not call it taken."""
    from service.cli import _port_taken

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    client.close()
    server.close()
    assert not _port_taken(port)
