"""The FinMatch dashboard's entry point: `streamlit run app/main.py` (or `make app`).

Four sections, each a page: Metrics, AI Insights, Insights History, Data Explorer. The
sidebar says which agent endpoint the app talks to and whether it answers.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import ui

HERE = Path(__file__).parent

st.set_page_config(page_title="FinMatch", page_icon=":material/account_balance:", layout="wide")
pages = [
    st.Page(
        HERE / "sections/metrics.py", title="Metrics", icon=":material/monitoring:", default=True
    ),
    st.Page(HERE / "sections/ai_insights.py", title="AI Insights", icon=":material/smart_toy:"),
    st.Page(HERE / "sections/history.py", title="Insights History", icon=":material/history:"),
    st.Page(HERE / "sections/explorer.py", title="Data Explorer", icon=":material/table:"),
]
page = st.navigation(pages)
client = ui.service()
with st.sidebar:
    st.markdown("### FinMatch")
    st.caption("Product matching analytics for retail banking")
    if client.health():
        st.caption(f":material/cloud_done: Agent endpoint {client.url}")
    else:
        st.caption(f":material/cloud_off: Agent endpoint {client.url} is not answering")
page.run()
