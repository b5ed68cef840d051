"""LangChain tools over the warehouse: describe the table, list and run metrics, run SQL.

Recoverable failures (a guard rejection, an unknown metric, a bad parameter, a timeout)
come back as text the model can act on; anything else is a bug and raises.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from langchain_core.tools import BaseTool, tool

from tools.evidence import Evidence
from tools.guard import GuardRejection, run_sql
from tools.metrics import CATALOG, Filters, UnknownMetric, run_metric
from tools.schema import TABLE, markdown_table
from tools.warehouse import QueryTimeout, Warehouse, WarehouseError, json_value

# Rows shown to a model per result: enough to read a breakdown, small enough for a prompt.
MAX_ROWS_TO_MODEL = 50
# Most rows a model's ad-hoc query keeps (as evidence; MAX_ROWS_TO_MODEL of them shown).
ROW_CAP = 200


# Absolute file paths (the warehouse file, an installed package) in an error message say
# nothing a model can act on and show it how this machine is laid out.
_PATH = re.compile(r"(?<![\w.])/(?:[\w.\-]+/)+[\w.\-]*")


def tool_error(error: Exception) -> str:
    """Return a recoverable failure as the text a model gets: the message, no paths."""
    message = error.args[0] if isinstance(error, UnknownMetric) else str(error)
    if isinstance(error, WarehouseError) and not isinstance(error, QueryTimeout):
        message += ". Fix the query and try again"
    return "Error: " + _PATH.sub("<path>", message)


# Text from the table a model is shown, at most this long a value.
MAX_TEXT_TO_MODEL = 200


def as_data(value: Any) -> Any:
    """Mark text from the table as data for a model: {"untrusted_text": value}, cut short.

    Any text in a result row came out of the bank's table (or was computed from it), and
    may read like an instruction; the marker tells the model which text is data. Lists,
    maps (their keys too) and any other value are marked through.
    """
    if isinstance(value, str):
        text = value if len(value) <= MAX_TEXT_TO_MODEL else value[: MAX_TEXT_TO_MODEL - 1] + "…"
        return {"untrusted_text": text}
    if isinstance(value, list | tuple):
        return [as_data(v) for v in value]
    if isinstance(value, dict):  # a map's keys are data as much as its values
        return [{"key": as_data(k), "value": as_data(v)} for k, v in value.items()]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return as_data(str(json_value(value)))


def evidence_text(evidence: Evidence, max_rows: int = MAX_ROWS_TO_MODEL) -> str:
    """Return Evidence as compact JSON for a model, rows cut to `max_rows`, text marked."""
    shown = evidence.rows[:max_rows]
    body: dict[str, Any] = {
        "metric_id": evidence.metric_id,
        "title": evidence.title,
        "parameters": evidence.parameters,
        "row_count": evidence.row_count,
        "truncated": evidence.truncated or len(shown) < len(evidence.rows),
        "rows": [{k: as_data(v) for k, v in row.items()} for row in shown],
    }
    return json.dumps(body, default=str)


def build_tools(
    warehouse: Warehouse,
    *,
    filters: Filters | None = None,
    row_cap: int = ROW_CAP,
    timeout_s: float = 30.0,
) -> list[BaseTool]:
    """Return the data tools bound to `warehouse`; metric runs use `filters` by default.

    The tools hold no state of their own, so each binding is built once (building four
    tools costs about 20 ms) and shared by the runs that ask for it.
    """
    scope = (filters or Filters()).model_dump_json()
    return list(_bound_tools(warehouse, scope, row_cap, timeout_s))


@functools.lru_cache(maxsize=64)
def _bound_tools(
    warehouse: Warehouse, scope_json: str, row_cap: int, timeout_s: float
) -> tuple[BaseTool, ...]:
    scope = Filters.model_validate_json(scope_json)

    @tool
    def describe_table() -> str:
        """Describe the fpr_records table: its columns, types and meaning."""
        return f"Table {TABLE} (one row per product recommendation):\n{markdown_table()}"

    @tool
    def list_metrics() -> str:
        """List the catalog metrics with their ids, descriptions and parameters."""
        lines = []
        for m in CATALOG.values():
            params = "; ".join(f"{k} (default {d}): {doc}" for k, (d, doc) in m.parameters.items())
            lines.append(
                f"- {m.id}: {m.title}. {m.description}"
                + (f" Parameters: {params}" if params else "")
            )
        return "\n".join(lines)

    @tool
    def run_catalog_metric(metric_id: str, parameters: dict[str, Any] | None = None) -> str:
        """Run a catalog metric by id (see list_metrics) within the analysis scope."""
        try:
            return evidence_text(run_metric(warehouse, metric_id, scope, parameters))
        except (UnknownMetric, ValueError, WarehouseError) as e:
            return tool_error(e)

    @tool
    def run_guarded_sql(sql: str) -> str:
        """Run one read-only SELECT over fpr_records (DuckDB SQL) in the analysis scope."""
        try:
            return evidence_text(
                run_sql(warehouse, sql, row_cap=row_cap, timeout_s=timeout_s, scope=scope)
            )
        except (GuardRejection, WarehouseError) as e:
            return tool_error(e)

    return (describe_table, list_metrics, run_catalog_metric, run_guarded_sql)
