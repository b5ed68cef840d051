"""Fixtures of the dashboard tests: a real agent endpoint on 127.0.0.1.

The endpoint lists two scripted models (tests/graphs/scripted.py) standing in for a hosted
LLM, which cannot run here: `gated` waits at the model step until the test creates its
gate file, `failing` raises there.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server

GATED = "import:tests.graphs.scripted:gated"
FAILING = "import:tests.graphs.scripted:failing"


@pytest.fixture(scope="package")
def warehouse_file(seeded_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("app-wh") / "fpr.duckdb"
    shutil.copy(seeded_path, path)
    return path


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, warehouse_file: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("app-svc"),
        warehouse_file,
        FINMATCH_TRACING="false",
    )
    srv.start()
    yield srv
    srv.stop()
