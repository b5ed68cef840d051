"""Insights History: every run the endpoint recorded; open a report, compare two.

The history is the endpoint's (it survives restarts and is shared by every client),
filtered and paged there, newest first.
"""

from __future__ import annotations

import datetime
from typing import Any

import pandas as pd
import streamlit as st

from app import ui
from app.client import Follower

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
PAGE = 20


def label(run: dict[str, Any]) -> str:
    """One run in a picker: when, focus area, model, scope, status and id (labels are unique)."""
    return (
        f"{ui.when(run['created_at'])} · {run['focus_area']} · {run['model']} · "
        f"{ui.describe(run['filters'])} · {run['status']} · {run['id'][:8]}"
    )


def run_view(client: Any, run_id: str, key: str, *, compact: bool = False) -> None:
    """A run as recorded: what was asked, its steps, and its report or why it has none."""
    run = ui.call(client.run, run_id)
    st.markdown(
        f"{ui.STATUS_ICON.get(run['status'], '')} **{run['focus_area']}** with `{run['model']}` · "
        f"{run['status']} · scope: {ui.describe(run['filters'])}"
    )
    st.caption(
        f"Run `{run['id']}` · created {ui.when(run['created_at'])}"
        + (f" · finished {ui.when(run['finished_at'])}" if run.get("finished_at") else "")
        + (f" · trace `{run['trace_id']}`" if run.get("trace_id") else "")
        + f" · attempts {run['attempts']}"
    )
    with st.expander(f"{len(run['steps'])} finished steps", expanded=not compact):
        ui.step_lines(run["steps"])
    if run["status"] == "succeeded" and run.get("result"):
        ui.report_view(run["result"], key, compact=compact)
    elif run["status"] == "failed":
        st.error(f"The run failed: {run['error'] or 'no reason was recorded.'}")
    elif run["status"] == "cancelled":
        st.warning("The run was stopped before its report.")
    else:
        st.info(f"The run is {run['status']}; its report comes when it finishes.")
    if not compact and run["status"] in ("failed", "cancelled"):
        if st.button("Resume in AI Insights", icon=":material/replay:", key=f"{key}_resume"):
            resumed = ui.call(client.resume, run["id"])
            previous = st.session_state.get("insights_follower")
            if previous is not None:
                previous.stop()
            st.session_state["insights_run"] = resumed
            st.session_state["insights_follower"] = Follower(client, run["id"]).start()
            st.switch_page("sections/ai_insights.py")


st.title("Insights History")
client = ui.service()
areas = ui.call(ui.focus_areas, client.url, client)
models = ui.call(client.models)
c = st.columns(4)
focus = c[0].selectbox(
    "Focus area", ["Any", *(a["slug"] for a in areas), "all"], key="history_focus"
)
model = c[1].selectbox("Model", ["Any", *(m["name"] for m in models)], key="history_model")
status = c[2].selectbox("Status", ["Any", *STATUSES], key="history_status")
since = c[3].date_input("Since", value=None, key="history_since")
query: dict[str, Any] = {
    "focus_area": None if focus == "Any" else focus,
    "model": None if model == "Any" else model,
    "status": None if status == "Any" else status,
    "since": (
        datetime.datetime.combine(since, datetime.time()).astimezone().isoformat()
        if isinstance(since, datetime.date)
        else None
    ),
}
cursors = ui.cursors("history", tuple(sorted(query.items())))
page = ui.call(client.history, limit=PAGE, cursor=cursors[-1], **query)
runs = page["items"]
if not runs:
    st.info("No runs match. Start one in AI Insights.")
    st.stop()
st.caption(f"Page {len(cursors)} · newest first")
st.dataframe(
    pd.DataFrame(
        [
            {
                "created": ui.when(r["created_at"]),
                "focus area": r["focus_area"],
                "model": r["model"],
                "status": r["status"],
                "scope": ui.describe(r["filters"]),
                "run": r["id"],
            }
            for r in runs
        ]
    ),
    hide_index=True,
    width="stretch",
)
ui.pager("history", cursors, page["next_cursor"], ("Newer", "Older"))

by_id = {r["id"]: r for r in runs}
open_tab, compare_tab = st.tabs(["Open a report", "Compare two"])
with open_tab:
    chosen = st.selectbox(
        "Run", list(by_id), format_func=lambda i: label(by_id[i]), key="history_open"
    )
    if chosen:
        run_view(client, chosen, f"history_{chosen}")
with compare_tab:
    pair = st.multiselect(
        "Two runs to compare",
        list(by_id),
        format_func=lambda i: label(by_id[i]),
        max_selections=2,
        key="history_compare",
    )
    if len(pair) < 2:
        st.caption("Pick two runs (for example the same focus area with two models or scopes).")
    else:
        left, right = st.columns(2)
        for col, run_id in zip((left, right), pair, strict=True):
            with col:
                run_view(client, run_id, f"compare_{run_id}", compact=True)
