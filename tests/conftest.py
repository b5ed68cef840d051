"""Shared fixtures: small DuckDB warehouses built by the real generator."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tools.generator import Relationships
from tools.ingest import seed_table
from tools.warehouse import DuckDBWarehouse


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
