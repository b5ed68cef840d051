"""The AI step with a tool-calling chat model.

Hosted models (Databricks serving endpoints, OpenAI-compatible servers) cannot run here,
so these tests use `ScriptedChatModel`, which replays fixed replies, tool calls included.
Everything else is real: the graph, the warehouse, the guard and the report.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from graphs import optimization_opportunities
from graphs.areas import OPTIMIZATION
from graphs.context import Context
from graphs.models import ModelError
from graphs.prompts import DIGEST_ROWS, evidence_digest, prompt
from graphs.report import Report
from tests.graphs import scripted
from tests.graphs.scripted import ScriptedChatModel, answer, tool_call

MODEL = "import:tests.graphs.scripted:current"
ESCAPE = "SELECT * FROM read_csv('/etc/passwd')"


@pytest.fixture
def use() -> Iterator[Any]:
    def put(model: ScriptedChatModel) -> ScriptedChatModel:
        scripted.CURRENT.append(model)
        return model

    yield put
    scripted.CURRENT.clear()


def run(path: Path, **context: Any) -> dict[str, Any]:
    ctx = Context(warehouse=f"duckdb:///{path}", model=MODEL, **context)
    return asyncio.run(optimization_opportunities.graph.ainvoke({"question": ""}, context=ctx))


def sections(body: str) -> list[tuple[str, str]]:
    return [(t, body) for t in OPTIMIZATION.titles]


def test_tool_calls_become_evidence_within_the_budget(large_path: Path, use: Any) -> None:
    model = use(
        ScriptedChatModel(
            replies=[
                AIMessage(
                    "",
                    tool_calls=[
                        tool_call("run_catalog_metric", {"metric_id": "revenue"}, "c1"),
                        tool_call(
                            "run_guarded_sql",
                            {
                                "sql": "SELECT customer_segment, COUNT(*) AS n FROM fpr_records "
                                "GROUP BY customer_segment"
                            },
                            "c2",
                        ),
                        tool_call("run_guarded_sql", {"sql": ESCAPE}, "c3"),
                    ],
                ),
                AIMessage(
                    "",
                    tool_calls=[
                        tool_call("describe_table", {}, "c4"),
                        tool_call("run_catalog_metric", {"metric_id": "kpis"}, "c5"),
                    ],
                ),
                answer(
                    "Personal Loans to Small Business lag [OPT-2].",
                    sections("Acceptance is 15.1% there [OPT-2] and 88.8% elsewhere."),
                    [("Reprice the Small Business Personal Loan", ["OPT-2"])],
                ),
            ]
        )
    )
    out = run(large_path, max_tool_calls=4)
    report = Report(**out["report"])
    analysis = out["steps"][4]
    assert analysis["step"] == "AI Banking Optimization Intelligence"
    assert analysis["detail"] == f"{MODEL}: 5 sections, 1 recommendations, 4 tool calls"
    new = [e for e in report.evidence if e.metric_id in ("revenue", "sql")]
    assert [e.metric_id for e in new] == ["revenue", "sql"]
    assert [e.id for e in new] == [f"E{len(report.evidence) - 1}", f"E{len(report.evidence)}"]
    assert "GROUP BY customer_segment" in new[1].sql
    tool_replies = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert len(tool_replies) == 5
    assert tool_replies[0].content.startswith(f"[evidence {new[0].id}]")
    assert "read_csv" in str(tool_replies[2].content) and "Error" in str(tool_replies[2].content)
    assert "tool budget is spent" in str(tool_replies[4].content)
    assert report.model == MODEL and "offline" not in report.model_label
    assert report.ungrounded == ["88.8%"]
    assert report.recommendations[0].finding_ids == ["OPT-2"]


def test_an_answer_without_json_is_asked_for_again(large_path: Path, use: Any) -> None:
    model = use(
        ScriptedChatModel(
            replies=[
                AIMessage("Here is my analysis: acceptance lags for Small Business."),
                answer("Small Business lags [OPT-2].", sections("See [OPT-2]."), []),
            ]
        )
    )
    report = Report(**run(large_path, max_tool_calls=0)["report"])
    assert report.headline == "Small Business lags [OPT-2]."
    last = model.seen[-1][-1]
    assert isinstance(last, HumanMessage) and "not a valid answer" in str(last.content)


def test_a_failed_call_is_retried(large_path: Path, use: Any) -> None:
    model = use(
        ScriptedChatModel(
            fail_first=1, replies=[answer("Small Business lags [OPT-2].", sections("x"), [])]
        )
    )
    report = Report(**run(large_path, max_tool_calls=0, model_retries=1)["report"])
    assert report.headline == "Small Business lags [OPT-2]." and len(model.seen) == 2


def test_a_model_that_keeps_failing_raises_a_clear_error(large_path: Path, use: Any) -> None:
    use(ScriptedChatModel(fail_first=5, replies=[]))
    with pytest.raises(ModelError, match=r"failed after 1 attempt.*can be resumed"):
        run(large_path, max_tool_calls=0, model_retries=0)


def test_the_prompt_is_bounded_whatever_the_evidence() -> None:
    def state(rows: int) -> dict[str, Any]:
        ev = {
            "metric_id": "acceptance_rates",
            "title": "t",
            "row_count": rows,
            "rows": [{"segment": f"s{i}", "records": i} for i in range(rows)],
        }
        return {"findings": [], "evidence": [{"id": f"E{i}", **ev} for i in range(40)]}

    small = prompt(OPTIMIZATION, state(DIGEST_ROWS), "all records")
    large = prompt(OPTIMIZATION, state(100_000), "all records")
    assert len(str(large[1].content)) <= len(str(small[1].content)) + 40 * len("100000")
    digest = evidence_digest(state(100_000)["evidence"])
    assert all(len(e["rows"]) == DIGEST_ROWS for e in digest)
    assert (
        json.loads(str(large[1].content))["request"]["focus_area"] == "Optimization Opportunities"
    )


def test_a_statement_that_crashed_the_run_comes_back_as_an_error_the_model_can_read(
    large_path: Path, use: Any
) -> None:
    deep = "SELECT " + "(" * 60 + "1" + ")" * 60
    chained = "SELECT " + "NOT " * 3000 + "TRUE FROM fpr_records"
    model = use(
        ScriptedChatModel(
            replies=[
                AIMessage(
                    "",
                    tool_calls=[
                        tool_call("run_guarded_sql", {"sql": deep}, "c1"),
                        tool_call("run_guarded_sql", {"sql": chained}, "c2"),
                        tool_call("run_guarded_sql", {"sql": "SELECT '\udc80'"}, "c3"),
                        tool_call("run_guarded_sql", {"sql": "SELECT CAST('x' AS INT)"}, "c4"),
                    ],
                ),
                answer("Small Business lags [OPT-2].", sections("See [OPT-2]."), []),
            ]
        )
    )
    report = Report(**run(large_path, max_tool_calls=4)["report"])
    assert report.headline == "Small Business lags [OPT-2]."
    replies = [str(m.content) for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert len(replies) == 4
    assert all(r.startswith("Error: ") for r in replies)
    for text in replies:
        assert "Traceback" not in text and 'File "' not in text
        assert str(large_path.parent) not in text and "/site-packages/" not in text
