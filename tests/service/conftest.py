"""Fixtures of the service tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from service.tracking import use_tracking


@pytest.fixture
def trace_store(tmp_path: Path) -> Iterator[None]:
    """ResponsesAgent traces predict itself: keep those traces out of the checkout.

    set_tracking_uri also sets MLFLOW_TRACKING_URI for child processes; both are restored.
    """
    previous, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    use_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(previous)
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture
def own_warehouse(tmp_path: Path, seeded_path: Path) -> Path:
    """A copy of the 750-record table for one test's server (it pools its warehouse)."""
    path = tmp_path / "fpr.duckdb"
    shutil.copy(seeded_path, path)
    return path
