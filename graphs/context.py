"""Run context of every focus-area graph: model, warehouse, scope and limits.

Passed as `context=` when a graph runs and read by nodes as `runtime.context`, so a graph
runs the same under the CLI, the service, LangGraph Studio (which edits these fields)
and tests. Only the thread id travels in `config["configurable"]`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from tools.metrics import Filters


@dataclass(kw_only=True)
class Context:
    """What a run uses: which model, which warehouse, which slice of the data."""

    model: str = field(
        default="offline",
        metadata={
            "description": "Model name from the registry: 'offline' (deterministic analyst, "
            "no LLM), a Databricks serving endpoint, or 'openai:<model>'."
        },
    )
    warehouse: str = field(
        default="",
        metadata={
            "description": "Warehouse URL (duckdb:///path or databricks://); empty uses "
            "FINMATCH_WAREHOUSE or the embedded default."
        },
    )
    segment: str | None = field(
        default=None, metadata={"description": "Only this customer_segment"}
    )
    lifecycle_stage: str | None = field(
        default=None, metadata={"description": "Only this customer_lifecycle_stage"}
    )
    product_type: str | None = field(
        default=None, metadata={"description": "Only this product_type"}
    )
    date_from: str | None = field(
        default=None,
        metadata={"description": "Recommendations on or after this day (YYYY-MM-DD)"},
    )
    date_to: str | None = field(
        default=None,
        metadata={"description": "Recommendations on or before this day (YYYY-MM-DD)"},
    )
    max_tool_calls: int = field(
        default=4,
        metadata={"description": "Most data tool calls a tool-calling model may make"},
    )
    query_timeout_s: float = field(
        default=120.0, metadata={"description": "Timeout of one warehouse query, seconds"}
    )
    model_timeout_s: float = field(
        default=120.0, metadata={"description": "Timeout of one model call, seconds"}
    )
    model_retries: int = field(
        default=2, metadata={"description": "Retries of a failed model call, with backoff"}
    )
    shared_evidence: tuple[dict[str, Any], ...] = field(
        default=(),
        metadata={
            "description": "Evidence a portfolio run already gathered in this scope for all "
            "four areas (set by the portfolio; steps reuse it instead of querying)"
        },
    )

    def filters(self) -> Filters:
        """Return the run's scope as metric filters (raises ValueError on a bad date)."""
        return Filters(
            segment=self.segment or None,
            lifecycle_stage=self.lifecycle_stage or None,
            product_type=self.product_type or None,
            date_from=datetime.date.fromisoformat(self.date_from) if self.date_from else None,
            date_to=datetime.date.fromisoformat(self.date_to) if self.date_to else None,
        )
