import json

from tools.agent_tools import build_tools
from tools.metrics import Filters
from tools.warehouse import DuckDBWarehouse


def test_tools_answer_and_explain_failures(warehouse: DuckDBWarehouse) -> None:
    tools = {
        t.name: t for t in build_tools(warehouse, filters=Filters(segment="Retail"), row_cap=3)
    }
    assert set(tools) == {"describe_table", "list_metrics", "run_catalog_metric", "run_guarded_sql"}
    assert "`customer_churn_probability` | double" in tools["describe_table"].invoke({})
    listing = tools["list_metrics"].invoke({})
    assert "- value_at_risk:" in listing and "high_risk (default 0.6)" in listing

    kpis = json.loads(tools["run_catalog_metric"].invoke({"metric_id": "kpis"}))
    assert kpis["parameters"] == {"f_segment": "Retail"}
    retail = warehouse.run(
        "SELECT count(*) FROM fpr_records WHERE customer_segment = 'Retail'"
    ).rows[0][0]
    assert kpis["rows"][0]["records"] == retail

    rows = json.loads(tools["run_guarded_sql"].invoke({"sql": "SELECT record_id FROM fpr_records"}))
    assert rows["row_count"] == 3 and rows["truncated"]

    assert (
        tools["run_guarded_sql"]
        .invoke({"sql": "DROP TABLE fpr_records"})
        .startswith("Error: Query rejected: only queries may run")
    )
    assert "the catalog has:" in tools["run_catalog_metric"].invoke({"metric_id": "nope"})
    bad_param = tools["run_catalog_metric"].invoke(
        {"metric_id": "distributions", "parameters": {"top_n": "x"}}
    )
    assert bad_param.startswith("Error: Parameter 'top_n'")
    div0 = tools["run_guarded_sql"].invoke({"sql": "SELECT CAST('x' AS INTEGER) FROM fpr_records"})
    assert div0.startswith("Error: The warehouse rejected the query")


def test_guarded_sql_sees_only_the_analysis_scope(warehouse: DuckDBWarehouse) -> None:
    scope = Filters(segment="Retail", date_from="2024-01-01")
    tool = {t.name: t for t in build_tools(warehouse, filters=scope)}["run_guarded_sql"]
    expected = warehouse.run(
        "SELECT count(*) FROM fpr_records WHERE customer_segment = 'Retail' "
        "AND product_recommendation_date >= DATE '2024-01-01'"
    ).rows[0][0]
    assert 0 < expected < 750
    plain = json.loads(tool.invoke({"sql": "SELECT count(*) AS n FROM fpr_records"}))
    assert plain["rows"] == [{"n": expected}]
    # every read of the table is scoped: aliases, self-joins, CTEs and subqueries
    joined = json.loads(
        tool.invoke(
            {
                "sql": "WITH c AS (SELECT DISTINCT customer_segment AS s FROM fpr_records) "
                "SELECT (SELECT count(*) FROM c) AS segments, count(*) AS n "
                "FROM fpr_records AS r JOIN fpr_records x ON r.record_id = x.record_id"
            }
        )
    )
    assert joined["rows"] == [{"segments": 1, "n": expected}]


def test_every_kind_of_text_a_tool_returns_is_marked(warehouse: DuckDBWarehouse) -> None:
    tool = {t.name: t for t in build_tools(warehouse)}["run_guarded_sql"]
    result = json.loads(
        tool.invoke(
            {
                "sql": "SELECT CAST(any_value(customer_name) AS BLOB) AS b, "
                "histogram(customer_segment) AS h, "
                "CAST(list(customer_segment) AS VARCHAR[1]) AS fixed FROM fpr_records "
                "WHERE record_id = (SELECT min(record_id) FROM fpr_records)"
            }
        )
    )
    row = result["rows"][0]

    def texts(value: object) -> list[object]:
        if isinstance(value, dict):
            if set(value) == {"untrusted_text"}:
                return []
            return [t for v in value.values() for t in texts(v)]
        if isinstance(value, list):
            return [t for v in value for t in texts(v)]
        return [value] if isinstance(value, str) else []

    assert texts(row) == []  # no text is left unmarked: bytes, map keys, arrays
    assert row["b"]["untrusted_text"].startswith("0x")
    assert row["h"][0]["key"] == {"untrusted_text": row["h"][0]["key"]["untrusted_text"]}
