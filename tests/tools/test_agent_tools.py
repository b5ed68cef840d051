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
