"""Log, register and deploy the agents as a Databricks model-serving agent.

    python -m service.deploy --uc-model CATALOG.SCHEMA.MODEL --token-secret SCOPE/KEY
    python -m service.deploy --log-only          # log to the current MLflow store, no deploy

1. Logs `service/agent.py` (models-from-code) with the packages it imports (`graphs`,
   `tools`, `service`), requirements pinned to this environment's versions, an input
   example and its resources: the serving endpoints named by DBX_ENDPOINT..., the SQL
   warehouse of DATABRICKS_SQL_HTTP_PATH and the Unity Catalog table
   UC_CATALOG.UC_SCHEMA.UC_TABLE, so the endpoint is granted access to them. Logging runs
   the input example once (offline model) against FINMATCH_WAREHOUSE: point it at
   `databricks://` to check the real table before deploying.
2. Registers the model in Unity Catalog.
3. Deploys it with `databricks.agents.deploy` (the `deploy` extra: `uv sync --extra
   deploy`); the endpoint reads the same table, its SQL token comes from the secret.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from graphs.models import ModelSettings
from tools.settings import WarehouseSettings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graphs", "tools", "service")
DISTRIBUTION = "finmatch-agents"
INPUT_EXAMPLE: dict[str, Any] = {
    "input": [{"role": "user", "content": "How is the overall performance for Retail customers?"}],
    "custom_inputs": {"model": "offline"},
}
FINMATCH_HOME_ON_SERVING = "/tmp/finmatch"  # checkpoints of the endpoint's runs


class DeployError(Exception):
    """Deployment cannot go ahead; the message says what to set or install."""


@dataclass(frozen=True)
class Target:
    """Where the served agent reads its data and which models it may call."""

    host: str
    http_path: str
    catalog: str
    schema: str
    table: str
    endpoints: tuple[str, ...]

    @classmethod
    def from_settings(cls) -> Target:
        """Read the deployment's variables; name every one that is missing."""
        wh, models = WarehouseSettings(), ModelSettings()
        values = {
            "DATABRICKS_HOST": wh.databricks_host,
            "DATABRICKS_SQL_HTTP_PATH": wh.databricks_sql_http_path,
            "UC_CATALOG": wh.uc_catalog,
            "UC_SCHEMA": wh.uc_schema,
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise DeployError(
                "The served agent reads fpr_records in Unity Catalog; set "
                + ", ".join(missing)
                + " (environment or .env) before deploying."
            )
        return cls(
            host=str(wh.databricks_host),
            http_path=str(wh.databricks_sql_http_path),
            catalog=str(wh.uc_catalog),
            schema=str(wh.uc_schema),
            table=wh.uc_table,
            endpoints=tuple(models.databricks_endpoints()),
        )

    @property
    def warehouse_id(self) -> str:
        """The SQL warehouse id of the HTTP path (`/sql/1.0/warehouses/<id>`)."""
        found = re.search(r"/warehouses/([^/?]+)", self.http_path)
        if not found:
            raise DeployError(
                f"DATABRICKS_SQL_HTTP_PATH {self.http_path!r} is not a SQL warehouse path "
                "(/sql/1.0/warehouses/<id>); copy it from the warehouse's Connection details."
            )
        return found.group(1)

    def resources(self) -> list[Any]:
        """The MLflow resources the endpoint needs access to."""
        from mlflow.models.resources import (
            DatabricksServingEndpoint,
            DatabricksSQLWarehouse,
            DatabricksTable,
        )

        return [
            *(DatabricksServingEndpoint(endpoint_name=name) for name in self.endpoints),
            DatabricksSQLWarehouse(warehouse_id=self.warehouse_id),
            DatabricksTable(table_name=f"{self.catalog}.{self.schema}.{self.table}"),
        ]

    def environment(self, token_secret: str) -> dict[str, str]:
        """The endpoint's environment: the table, the SQL token (a secret), the models."""
        env = {
            "FINMATCH_WAREHOUSE": "databricks://",
            "FINMATCH_HOME": FINMATCH_HOME_ON_SERVING,
            "DATABRICKS_HOST": self.host,
            "DATABRICKS_SQL_HTTP_PATH": self.http_path,
            "DATABRICKS_TOKEN": "{{secrets/" + token_secret + "}}",
            "UC_CATALOG": self.catalog,
            "UC_SCHEMA": self.schema,
            "UC_TABLE": self.table,
        }
        for i, name in enumerate(self.endpoints, start=1):
            env["DBX_ENDPOINT" if i == 1 else f"DBX_ENDPOINT_{i}"] = name
        return env


def requirements() -> list[str]:
    """This project's dependencies pinned to the versions installed here.

    Serving needs the full `mlflow` (its scoring server) where this project uses
    `mlflow-skinny`; both are the same version.
    """
    pins = []
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        req = Requirement(line)
        if req.marker is not None:  # extras such as `deploy` stay out of serving
            continue
        installed = importlib.metadata.version(req.name)
        name = "mlflow" if req.name == "mlflow-skinny" else req.name
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pins.append(f"{name}{extras}=={installed}")
    return pins


def log_agent(resources: Sequence[Any] = ()) -> Any:
    """Log the agent (models-from-code) to the current MLflow store; return its ModelInfo."""
    import mlflow

    with mlflow.start_run(run_name="finmatch-agent"):
        return mlflow.pyfunc.log_model(
            name="agent",
            python_model=str(ROOT / "service" / "agent.py"),
            code_paths=[str(ROOT / p) for p in PACKAGES],
            pip_requirements=requirements(),
            input_example=INPUT_EXAMPLE,
            resources=list(resources),
        )


def register(model_uri: str, name: str, registry_uri: str) -> str:
    """Register the logged model under `name`; return the new version."""
    import mlflow

    mlflow.set_registry_uri(registry_uri)
    return str(mlflow.register_model(model_uri, name).version)


def agents_deploy() -> Callable[..., Any]:
    """Return `databricks.agents.deploy`, or say how to install it."""
    try:
        agents = importlib.import_module("databricks.agents")
    except ImportError as e:
        raise DeployError(
            "Deploying needs the databricks-agents package: run `uv sync --extra deploy` "
            "(or `pip install 'finmatch-agents[deploy]'`), then run this again."
        ) from e
    deploy: Callable[..., Any] = agents.deploy
    return deploy


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def _progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.deploy",
        description="Log the FinMatch agent to MLflow, register it in Unity Catalog and "
        "deploy it to a Databricks model-serving endpoint.",
    )
    p.add_argument("--uc-model", help="Unity Catalog model name: catalog.schema.model")
    p.add_argument(
        "--token-secret",
        help="Secret holding the SQL warehouse token, as scope/key "
        "(create it with `databricks secrets put-secret SCOPE KEY`)",
    )
    p.add_argument("--endpoint", help="Serving endpoint name (default: chosen by Databricks)")
    p.add_argument("--scale-to-zero", action="store_true", help="Let the endpoint sleep idle")
    p.add_argument(
        "--registry-uri", default="databricks-uc", help="Model registry (default: databricks-uc)"
    )
    p.add_argument(
        "--log-only",
        action="store_true",
        help="Only log the model to the current MLflow store (MLFLOW_TRACKING_URI)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the deployment; print where the endpoint is."""
    args = _parser().parse_args(argv)
    try:
        if args.log_only:
            info = log_agent()
            _say(f"Logged the agent as {info.model_uri}")
            return 0
        if not args.uc_model or not args.token_secret:
            raise DeployError(
                "Deploying needs --uc-model catalog.schema.model and --token-secret scope/key."
            )
        if args.registry_uri == "databricks-uc" and args.uc_model.count(".") != 2:
            raise DeployError(
                f"--uc-model {args.uc_model!r} is not a Unity Catalog name: give "
                "catalog.schema.model."
            )
        if args.token_secret.count("/") != 1:
            raise DeployError(f"--token-secret {args.token_secret!r} must be scope/key.")
        deploy = agents_deploy()  # before the slow part: fail fast when it is missing
        target = Target.from_settings()
        resources = target.resources()
        _progress(f"Logging the agent with {len(resources)} resources ...")
        info = log_agent(resources)
        _progress(f"Registering {info.model_uri} as {args.uc_model} ...")
        version = register(info.model_uri, args.uc_model, args.registry_uri)
        _progress(f"Deploying {args.uc_model} version {version} ...")
        deployment = deploy(
            args.uc_model,
            int(version),
            scale_to_zero=args.scale_to_zero,
            environment_vars=target.environment(args.token_secret),
            endpoint_name=args.endpoint,
            tags={"app": "finmatch"},
        )
    except DeployError as e:
        _progress(f"error: {e}")
        return 2
    _say(f"Endpoint: {deployment.endpoint_name}")
    _say(f"Query URL: {deployment.query_endpoint}")
    _say(f"Review app: {deployment.review_app_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
