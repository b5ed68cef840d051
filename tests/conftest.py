"""Shared fixtures: small DuckDB warehouses built by the real generator."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pandas as pd
import pytest

from tools.generator import Relationships
from tools.ingest import seed_table
from tools.warehouse import DuckDBWarehouse

ROOT = Path(__file__).resolve().parents[1]
# The scripted models of tests/graphs/scripted.py a served run may use.
SCRIPTED_MODELS = ",".join(
    f"import:tests.graphs.scripted:{name}" for name in ("gated", "failing", "hanging", "current")
)


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`finmatch serve` as a child process; restartable on the same home and warehouse.

    FINMATCH_TEST_MARKER and FINMATCH_TEST_GATE are the files the scripted models of
    tests/graphs/scripted.py write and wait for.
    """

    def __init__(self, tmp: Path, warehouse: Path, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FINMATCH_HOME": str(tmp / "home"),
            "FINMATCH_WAREHOUSE": f"duckdb:///{warehouse}",
            "FINMATCH_TEST_MARKER": str(tmp / "marker"),
            "FINMATCH_TEST_GATE": str(tmp / "gate"),
            "FINMATCH_IMPORT_MODELS": SCRIPTED_MODELS,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'home' / 'mlflow.db'}",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.tmp / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.tmp / "server.log").read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the service did not start in 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def seeded_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default 750-row table (seed 42)."""
    path = tmp_path_factory.mktemp("wh") / "fpr.duckdb"
    seed_table(path)
    return path


@pytest.fixture(scope="session")
def large_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 rows with the documented relationships planted."""
    path = tmp_path_factory.mktemp("wh") / "large.duckdb"
    seed_table(path, rows=20_000, seed=7)
    return path


@pytest.fixture(scope="session")
def null_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 rows with no relationship planted."""
    path = tmp_path_factory.mktemp("wh") / "null.duckdb"
    seed_table(path, rows=20_000, seed=7, relationships=Relationships.none())
    return path


@pytest.fixture
def warehouse(seeded_path: Path) -> Iterator[DuckDBWarehouse]:
    wh = DuckDBWarehouse(seeded_path)
    yield wh
    wh.close()


def forget_kept_results(path: Path) -> None:
    """Drop the results the pooled warehouse of `path` kept, so the next run queries."""
    from graphs.resources import warehouse_for

    kept = warehouse_for(f"duckdb:///{path}").results
    assert kept is not None
    kept.clear()


def frame(path: Path, sql: str = "SELECT * FROM fpr_records") -> pd.DataFrame:
    """Read a small fixture table into pandas, for independent checks only.

    Reads a copy: DuckDB refuses a second connection with another configuration to a file
    this process already has open (the agents' pooled read-only warehouse).
    """
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        con = duckdb.connect(str(copy), read_only=True)
        try:
            return con.execute(sql).df()
        finally:
            con.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (run as `postgres` when tests run as root)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="finmatch-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        [*as_user, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "finmatch"], **run
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    start = [*as_user, pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log")]
    subprocess.run([*start, "-w", "start"], **run)
    try:
        yield f"postgresql://finmatch@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "fast", "stop"], **run)
        shutil.rmtree(data, ignore_errors=True)
