"""The loader (tools/) and the connector (connector/, which cannot import tools/) hold the
same contract: the same columns, nullability and number ranges, and the same verdict on
values at and past the ends of every range."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tools.ingest import LoadError, load_file, seed_table
from tools.schema import COLUMNS, Column
from tools.sync import runner_env

pytestmark = pytest.mark.connector

ROOT = Path(__file__).resolve().parents[2]


def _in_connector_env(script: str, stdin: str = "") -> Any:
    """Run `script` with the connector importable, in its own environment; return its JSON."""
    python = runner_env() / "bin" / "python"
    assert python.exists(), f"{python} is missing: run `make connector-env` first"
    out = subprocess.run(
        [str(python), "-c", script],
        cwd=ROOT / "connector",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out)


def test_the_connector_declares_the_schemas_nullability_and_ranges() -> None:
    script = (
        "import json, connector\n"
        "print(json.dumps({n: [f.nullable, f.low, f.high] for n, f in connector.FIELDS.items()}))"
    )
    declared = _in_connector_env(script)
    assert declared == {c.name: [c.nullable, c.low, c.high] for c in COLUMNS}


def _probes(col: Column) -> list[float]:
    """Values at, inside and just past each end of the column's range, and non-finite ones."""
    values: list[float] = [math.nan, math.inf, -math.inf]
    step = 1 if col.type == "bigint" else 0.001
    for end, far in ((col.low, -(10.0**6)), (col.high, 10.0**12)):
        values += [far] if end is None else [end, end - step, end + step]
    if col.type == "bigint":
        return [v if not math.isfinite(v) else int(v) for v in values] + [2.5]
    return values


def _allowed(col: Column, value: float) -> bool:
    if not math.isfinite(value) or (col.type == "bigint" and not isinstance(value, int)):
        return False
    return (col.low is None or value >= col.low) and (col.high is None or value <= col.high)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One valid record from the generator, dates as the API sends them."""
    path = tmp_path_factory.mktemp("one") / "one.duckdb"
    seed_table(path, rows=1)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rel = con.execute("SELECT * FROM fpr_records")
        names = [d[0] for d in rel.description or []]
        row = dict(zip(names, rel.fetchone() or (), strict=True))
    finally:
        con.close()
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def test_the_loader_and_the_connector_agree_on_every_range(
    tmp_path: Path, record: dict[str, Any]
) -> None:
    numbers = [col for col in COLUMNS if col.type in ("double", "bigint")]
    cases = [(col, value) for col in numbers for value in _probes(col)]
    records = [{**record, col.name: value} for col, value in cases]
    verdicts = _in_connector_env(
        "import json, sys, connector\n"
        "print(json.dumps([connector.check_record(r) for r in json.load(sys.stdin)]))",
        json.dumps(records),
    )

    target = tmp_path / "target.duckdb"
    seed_table(target, rows=5)
    disagreements = []
    for (col, value), connector_problems in zip(cases, verdicts, strict=True):
        source = tmp_path / "probe.csv"
        with source.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            writer.writeheader()
            writer.writerow({**record, col.name: repr(value)})
        try:
            load_file(target, source)
            loaded = True
        except LoadError:
            loaded = False
        expected = _allowed(col, value)
        if (loaded, not connector_problems) != (expected, expected):
            connector = connector_problems or "accepted"
            disagreements.append(
                f"{col.name}={value!r}: expected {'accept' if expected else 'reject'}, loader "
                f"{'accepted' if loaded else 'rejected'}, connector {connector}"
            )
    assert not disagreements, "\n".join(disagreements)


def test_the_ranges_are_the_ones_the_descriptions_state() -> None:
    for col in COLUMNS:
        closed = col.low is not None and col.high is not None
        assert (f"({col.range_text})" in col.description) == closed, col.name
