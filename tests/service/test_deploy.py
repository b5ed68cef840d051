"""The serving agent logged, loaded back and served offline; the deployment's arguments.

What needs a Databricks workspace (Unity Catalog, `databricks.agents.deploy`) cannot run
here: the registry is a local SQLite one and `databricks.agents` is a stand-in that
records what it was asked to deploy.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.models import Model, validate_serving_input

from graphs.resources import close_all
from service.deploy import INPUT_EXAMPLE, Target, log_agent, main, requirements

TARGET = Target(
    host="adb-1.azuredatabricks.net",
    http_path="/sql/1.0/warehouses/abc123",
    catalog="ts-catalog",
    schema="finmatch",
    table="fpr_records",
    endpoints=("llama-endpoint", "claude-endpoint"),
)


@pytest.fixture
def home(seeded_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project home whose embedded warehouse is a copy of the seeded one."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(seeded_path, home / "fpr.duckdb")
    monkeypatch.setenv("FINMATCH_HOME", str(home))
    monkeypatch.delenv("FINMATCH_WAREHOUSE", raising=False)
    yield home
    close_all()


def texts(output: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in output]


@pytest.mark.usefixtures("trace_store")
def test_logged_agent_loads_predicts_streams_and_validates(home: Path) -> None:
    info = log_agent(TARGET.resources())
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    databricks = (Model.load(local).resources or {})["databricks"]
    assert databricks["serving_endpoint"] == [
        {"name": "llama-endpoint"},
        {"name": "claude-endpoint"},
    ]
    assert databricks["sql_warehouse"] == [{"name": "abc123"}]
    assert databricks["table"] == [{"name": "ts-catalog.finmatch.fpr_records"}]
    assert {p.name for p in (local / "code").iterdir()} >= {"graphs", "tools", "service"}

    model = mlflow.pyfunc.load_model(info.model_uri)
    answer = model.predict(INPUT_EXAMPLE)
    lines = texts(answer["output"])
    assert lines[0].startswith("overall-performance: Banking Customer Data Initialization")
    assert lines[-1].startswith("# Overall Performance")
    assert answer["custom_outputs"]["filters"] == {"segment": "Retail"}  # from the words
    streamed = list(model.predict_stream(INPUT_EXAMPLE))
    assert texts([e["item"] for e in streamed])[:-1] == lines[:-1]

    serving_input = (local / "serving_input_example.json").read_text()
    assert json.loads(serving_input)["input"] == INPUT_EXAMPLE["input"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its successor needs a new virtualenv
        validated = validate_serving_input(info.model_uri, serving_input)
    assert texts(validated["output"])[:-1] == lines[:-1]


def test_requirements_pin_what_is_installed() -> None:
    pins = requirements()
    assert f"mlflow=={mlflow.__version__}" in pins  # the full package for serving
    assert not [p for p in pins if p.startswith(("mlflow-skinny", "databricks-agents"))]
    assert any(p.startswith("duckdb==") for p in pins)
    assert any(p.startswith("psycopg[binary]==") for p in pins)


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The deployment's settings and a `databricks.agents` that records its calls."""
    for name, value in {
        "DATABRICKS_HOST": TARGET.host,
        "DATABRICKS_SQL_HTTP_PATH": TARGET.http_path,
        "UC_CATALOG": TARGET.catalog,
        "UC_SCHEMA": TARGET.schema,
        "DBX_ENDPOINT": "llama-endpoint",
    }.items():
        monkeypatch.setenv(name, value)
    calls: list[dict[str, Any]] = []

    def fake_deploy(model_name: str, model_version: int, **kwargs: Any) -> Any:
        calls.append({"model_name": model_name, "model_version": model_version, **kwargs})
        return types.SimpleNamespace(
            endpoint_name="agents_finmatch",
            query_endpoint="https://example/serving-endpoints/agents_finmatch/invocations",
            review_app_url="https://example/review",
        )

    monkeypatch.setitem(sys.modules, "databricks.agents", types.SimpleNamespace(deploy=fake_deploy))
    return calls


@pytest.mark.usefixtures("trace_store", "home")
def test_deploy_logs_registers_and_deploys(
    workspace: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    code = main(
        [
            "--uc-model",
            "finmatch_agent",
            "--token-secret",
            "finmatch/sql-token",
            "--registry-uri",
            registry,
            "--scale-to-zero",
        ]  # fmt: skip
    )
    assert code == 0, capsys.readouterr().err
    (call,) = workspace
    assert call["model_name"] == "finmatch_agent" and call["model_version"] == 1
    assert call["scale_to_zero"] is True
    env = call["environment_vars"]
    assert env["FINMATCH_WAREHOUSE"] == "databricks://"
    assert env["DATABRICKS_TOKEN"] == "{{secrets/finmatch/sql-token}}"
    assert (env["UC_CATALOG"], env["UC_SCHEMA"], env["UC_TABLE"]) == (
        "ts-catalog",
        "finmatch",
        "fpr_records",
    )
    assert env["DBX_ENDPOINT"] == "llama-endpoint"
    client = mlflow.MlflowClient(registry_uri=registry)
    assert client.get_model_version("finmatch_agent", "1").status == "READY"
    assert "Query URL: https://example/serving-endpoints" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--uc-model", "m.m.m"], {}, "needs --uc-model catalog.schema.model and --token-secret"),
        (["--uc-model", "agent", "--token-secret", "s/k"], {}, "is not a Unity Catalog name"),
        (["--uc-model", "c.s.m", "--token-secret", "sk"], {}, "must be scope/key"),
        (
            ["--uc-model", "c.s.m", "--token-secret", "s/k"],
            {"UC_SCHEMA": ""},
            "set UC_SCHEMA (environment or .env)",
        ),
        (
            ["--uc-model", "c.s.m", "--token-secret", "s/k"],
            {"DATABRICKS_SQL_HTTP_PATH": "/sql/protocolv1/o/1/0123"},
            "is not a SQL warehouse path",
        ),
    ],
)
def test_deploy_refuses_what_it_cannot_deploy(
    workspace: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert workspace == []


def test_deploy_says_how_to_install_databricks_agents(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "databricks.agents", None)  # not installed
    assert main(["--uc-model", "c.s.m", "--token-secret", "s/k"]) == 2
    assert "uv sync --extra deploy" in capsys.readouterr().err
