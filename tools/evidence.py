"""Evidence: what one query computed, with the SQL that computed it.

Every number the agents and the dashboard show comes from an `Evidence`, so it can be
traced back to the statement that produced it and run again.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Evidence(BaseModel):
    """The result of one catalog metric or guarded query."""

    metric_id: str = Field(description="Catalog metric id, or 'sql' for a guarded ad-hoc query")
    title: str = Field(description="What the rows are")
    sql: str = Field(description="The statement that actually ran, in the warehouse's dialect")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Bound parameters")
    columns: list[str] = Field(description="Column names of `rows`")
    rows: list[dict[str, Any]] = Field(description="Result rows (JSON-friendly values)")
    row_count: int = Field(description="Number of rows returned (after any cap)")
    truncated: bool = Field(False, description="True when the row cap cut the result short")
    elapsed_ms: float = Field(description="Time the warehouse took, in milliseconds")
    shared_pass_ms: float | None = Field(
        None,
        description="Set when the rows were rolled up from cells computed once for several "
        "metrics: the time of that shared pass over the table (`elapsed_ms` is then the "
        "roll-up's). `sql` run on its own gives the same rows.",
    )
    warehouse: str = Field("", description="URL of the warehouse that answered")
    cached: bool = Field(
        False,
        description="True when the rows were computed earlier, by the same statement on the "
        "same unchanged data, and reused (`elapsed_ms` is that earlier run's)",
    )
