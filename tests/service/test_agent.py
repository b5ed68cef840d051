"""The ResponsesAgent: requests understood, steps streamed, the report last."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.types.responses import ResponsesAgentRequest

from graphs.resources import close_all
from service.agent import FinMatchAgent
from service.responses import understand


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


@pytest.mark.usefixtures("trace_store")
def test_stream_then_predict(
    seeded_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINMATCH_HOME", str(tmp_path))
    copy = tmp_path / "fpr.duckdb"  # the run pools its warehouse: keep it off the shared file
    shutil.copy(seeded_path, copy)
    agent = FinMatchAgent(warehouse=f"duckdb:///{copy}")
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
    # The steps and their queries are spans of the trace ResponsesAgent opened.
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(response.custom_outputs["trace_id"])
    names = [span.name for span in trace.data.spans]
    assert names[0] == "predict"
    assert names[1] == "predict_stream"
    assert "Banking Optimization Data Preparation" in names
    assert any(name.startswith("query:") for name in names)
    close_all()


def test_an_empty_scope_is_answered_and_an_unknown_value_refused(
    seeded_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINMATCH_HOME", str(tmp_path))
    copy = tmp_path / "fpr.duckdb"
    shutil.copy(seeded_path, copy)
    agent = FinMatchAgent(warehouse=f"duckdb:///{copy}")
    empty = _request(
        "", filters={"segment": "Student", "lifecycle_stage": "Inactive", "date_from": "2030-01-01"}
    )
    response = agent.predict(empty)
    text = response.model_dump()["output"][-1]["content"][0]["text"]
    assert "No records match this scope" in text and "Widen it" in text
    with pytest.raises(ValueError, match="Unknown segment 'Retial'; did you mean 'Retail'"):
        agent.predict(_request("", filters={"segment": "Retial"}))
    close_all()
