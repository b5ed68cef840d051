"""Data Explorer: the records a page at a time, paged by the endpoint (keyset cursors)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import ui

SIZES = [10, 25, 50, 100, 200]

st.title("Data Explorer")
client = ui.service()
filters = ui.scope_filters("explorer")
size = st.selectbox("Records per page", SIZES, index=SIZES.index(50), key="explorer_page_size")

cursors = ui.cursors("explorer", (tuple(sorted(filters.items())), size))

page = ui.call(client.records, filters, size, cursors[-1])
records = page["records"]
number = len(cursors)
first = (number - 1) * size + 1
if records:
    st.caption(
        f"Page {number} · records {first:,}–{first + len(records) - 1:,} in record_id order · "
        f"scope: {ui.describe(filters)}"
    )
    st.dataframe(pd.DataFrame(records), hide_index=True, width="stretch")
else:
    st.info(f"No records match this scope ({ui.describe(filters)}).")

ui.pager("explorer", cursors, page["next_cursor"], ("Previous", "Next"))
