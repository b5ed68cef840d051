"""Where this process's MLflow traces go: set once, flushed at the end.

Pointing MLflow anywhere resets its exporter, and a trace whose spans are open then is
left unfinished (IN_PROGRESS): a process sets its tracking once (`use_tracking`), and
asking again for the same place does nothing. Traces are exported in the background;
`flush_traces` waits for them. Light on purpose (MLflow is imported only when used): the
trace writer process imports this and nothing of the graphs.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tools.settings import current, project_home


class TracingSettings(BaseSettings):
    """Whether runs record traces, and where."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking URI (default sqlite:///.finmatch/mlflow.db)"
    )
    finmatch_tracing: bool = Field(True, description="Record an MLflow trace per run")


def tracking_uri() -> str:
    """Return where traces go: MLFLOW_TRACKING_URI, else a SQLite store under the home."""
    uri = current(TracingSettings).mlflow_tracking_uri
    if not uri:
        home = project_home()
        home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{home / 'mlflow.db'}"
    return uri


_lock = threading.Lock()
_pointed: tuple[str, str] | None = None


def use_tracking(uri: str = "", experiment: str = "finmatch") -> None:
    """Point MLflow at `uri` (default: `tracking_uri()`) and `experiment`, once per process.

    A new experiment in a local store keeps its artifacts (trace data) beside the store,
    not in ./mlruns of whatever directory the process runs in.
    """
    global _pointed
    import mlflow

    uri = uri or tracking_uri()
    with _lock:
        if _pointed == (uri, experiment) and mlflow.get_tracking_uri() == uri:
            return
        with _store_lock(uri):
            mlflow.set_tracking_uri(uri)
            if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
                artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
            mlflow.set_experiment(experiment)
        _pointed = (uri, experiment)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold a lock beside a SQLite store while it is opened (created, migrated).

    Several processes opening a new store at once (traced commands started together)
    would each create its tables and migrate it, and leave it half made.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def flush_traces() -> None:
    """Wait until the traces this process recorded are in the store (if it traced any)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.flush_trace_async_logging()
