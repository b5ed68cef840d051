"""Fixtures of the service tests."""

from __future__ import annotations

import os
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
