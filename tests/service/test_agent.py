"""The ResponsesAgent: requests understood, steps streamed, the report last."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.types.responses import ResponsesAgentRequest

from graphs.resources import close_all
from service.agent import FinMatchAgent, understand
from service.runs import use_tracking


def _request(text: str, **custom: object) -> ResponsesAgentRequest:
    return ResponsesAgentRequest(
        input=[{"role": "user", "content": text}], custom_inputs=custom or None
    )


def test_requests_are_understood() -> None:
    assert understand(_request("How is the financial impact for Retail customers?")) == (
        "financial-impact",
        "offline",
        {"segment": "Retail"},
    )
    assert understand(_request("Anything about Small Business mortgages?"))[0] == "all"
    assert understand(_request("x", focus_area="overall-performance", filters={}))[0] == (
        "overall-performance"
    )
    with pytest.raises(ValueError, match="Unknown focus area 'growth'; choose one of"):
        understand(_request("x", focus_area="growth"))
    with pytest.raises(ValueError, match="Unknown model 'gpt-9'"):
        understand(_request("x", model="gpt-9"))
    with pytest.raises(ValueError, match="is after date_to"):
        understand(_request("x", filters={"date_from": "2025-02-01", "date_to": "2025-01-01"}))


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


@pytest.mark.usefixtures("trace_store")
def test_stream_then_predict(
    seeded_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINMATCH_HOME", str(tmp_path))
    copy = tmp_path / "fpr.duckdb"  # the run pools its warehouse: keep it off the shared file
    shutil.copy(seeded_path, copy)
    agent = FinMatchAgent(warehouse=f"duckdb:///{copy}", tracing=False)
    request = _request("", focus_area="optimization-opportunities", filters={"segment": "Retail"})
    events = list(agent.predict_stream(request))
    assert all(e.type == "response.output_item.done" for e in events)
    texts = [e.item["content"][0]["text"] for e in events]
    assert len(texts) == 7  # six steps, then the report
    assert texts[0].startswith("optimization-opportunities: Banking Optimization Data Preparation")
    assert texts[-1].startswith("# Optimization Opportunities")
    assert "_Scope: segment = Retail." in texts[-1]
    custom = events[-1].custom_outputs
    assert custom["focus_area"] == "optimization-opportunities" and custom["thread_id"]
    response = agent.predict(request)
    assert len(response.output) == 7
    assert response.custom_outputs["filters"] == {"segment": "Retail"}
    close_all()
