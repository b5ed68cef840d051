from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fpr_api.server import SourceApi, start_api


@pytest.fixture
def source_api(tmp_path: Path) -> Iterator[SourceApi]:
    api = start_api(tmp_path / "source.duckdb")
    yield api
    api.stop()
