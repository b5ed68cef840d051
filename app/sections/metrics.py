"""Metrics: the KPIs, financial metrics and distributions of the records in a scope."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app import ui

TOP = 8


@st.cache_data(ttl=60, show_spinner="Computing the metrics in the warehouse…")
def load(url: str, filters: dict[str, Any], _service: Any) -> dict[str, Any]:
    """GET /metrics for a scope, kept a minute (Refresh clears it)."""
    result: dict[str, Any] = _service.metrics(filters)
    return result


def distribution(
    rows: list[dict[str, Any]], dimension: str, top: int | None = None
) -> pd.DataFrame:
    """One dimension of the distributions as a frame (records, share, sales by value)."""
    frame = pd.DataFrame([r for r in rows if r["dimension"] == dimension])
    if frame.empty:
        return pd.DataFrame(columns=["value", "records", "share", "product_sales"])
    frame = frame.sort_values("records", ascending=False)
    return (frame.head(top) if top else frame)[["value", "records", "share", "product_sales"]]


def chart(title: str, frame: pd.DataFrame, caption: str = "") -> None:
    """A bar chart of records by value, with its table in an expander."""
    st.markdown(f"**{title}**")
    if frame.empty:
        st.caption("No records in this scope.")
        return
    st.bar_chart(frame, x="value", y="records", x_label="", y_label="records", height=260)
    if caption:
        st.caption(caption)


st.title("Metrics")
client = ui.service()
head, refresh = st.columns([6, 1])
with refresh:
    if st.button("Refresh", icon=":material/refresh:", key="metrics_refresh"):
        load.clear()
        ui.scope_values.clear()
with head:
    filters = ui.scope_filters("metrics")
data = ui.call(load, client.url, filters, client)
kpis = data["kpis"]["rows"][0] if data["kpis"]["rows"] else {}
if not kpis or not kpis.get("records"):
    st.info(f"No records match this scope ({ui.describe(filters)}). Widen the filters.")
    st.stop()

st.caption(f"Scope: {data['scope']} · {kpis['records']:,} recommendations")
st.subheader("Key performance indicators")
kpi_cols = st.columns(5)
kpi_cols[0].metric("Avg recommendation score", f"{kpis['avg_recommendation_score']:.3f}")
kpi_cols[1].metric("Avg customer satisfaction", f"{kpis['avg_satisfaction_score']:.3f}")
kpi_cols[2].metric("Avg churn probability", f"{kpis['avg_churn_probability']:.1%}")
kpi_cols[3].metric("Product sales", f"${kpis['total_product_sales']:,.0f}")
kpi_cols[4].metric("Acceptance rate", f"{kpis['acceptance_rate']:.1%}")
st.subheader("Financial metrics")
fin_cols = st.columns(4)
fin_cols[0].metric("Avg transaction value", f"${kpis['avg_transaction_value']:,.2f}")
fin_cols[1].metric("Avg account balance", f"${kpis['avg_account_balance']:,.2f}")
fin_cols[2].metric("Avg transaction count", f"{kpis['avg_transaction_count']:,.1f}")
fin_cols[3].metric("Transactions", f"{kpis['total_transaction_count']:,}")

rows = data["distributions"]["rows"]
st.subheader("Distributions")
left, right = st.columns(2)
with left:
    chart("Recommendation status", distribution(rows, "recommendation_status"))
    chart("Customer lifecycle stage", distribution(rows, "lifecycle_stage"))
    chart("Top customer segments", distribution(rows, "customer_segment", TOP))
with right:
    chart("Product affinity", distribution(rows, "affinity_band"))
    top_products = distribution(rows, "product_type", TOP)
    chart("Top product types", top_products)
    if not top_products.empty:
        st.dataframe(
            top_products.rename(columns={"value": "product type"}),
            hide_index=True,
            width="stretch",
            column_config={
                "share": st.column_config.NumberColumn(format="percent"),
                "product_sales": st.column_config.NumberColumn("product sales", format="dollar"),
            },
        )
with st.expander("The SQL behind these numbers"):
    for key in ("kpis", "distributions"):
        ev = data[key]
        kept = ", kept from an earlier query" if ev.get("cached") else ""
        st.markdown(f"**{ev['title']}** — {ev['elapsed_ms']:.0f} ms{kept}")
        st.code(data[key]["sql"], language="sql")
