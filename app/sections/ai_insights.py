"""AI Insights: pick a focus area, model and scope; start, stop, resume; watch the steps.

Start posts a run to the endpoint and follows its event stream in the background; the
progress below redraws twice a second from what has arrived, so Stop answers at once.
When the stream ends the page shows the report, or why the run stopped and Resume.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import ui
from app.client import Follower

ALL = "all"


def follow(client: Any, run: dict[str, Any], events: list[dict[str, Any]] | None = None) -> None:
    """Make `run` this session's current run and follow its events from where we are."""
    previous = st.session_state.get("insights_follower")
    if previous is not None:
        previous.stop()
    events = list(events or [])
    after = max((e["seq"] for e in events), default=0)
    st.session_state["insights_run"] = run
    st.session_state["insights_follower"] = Follower(
        client, run["id"], after, events=events
    ).start()


def total_steps(areas: dict[str, dict[str, Any]], focus: str) -> int:
    """Steps a run of `focus` goes through (the four areas and the summary for 'all')."""
    if focus == ALL:
        return sum(len(a["steps"]) for a in areas.values()) + 1
    return len(areas[focus]["steps"])


def progress(events: list[dict[str, Any]], total: int) -> tuple[list[dict[str, Any]], Any]:
    """The finished steps and the step under way (if any) from a run's events."""
    finished = [e for e in events if e["type"] == "step_finish"]
    done = {(e.get("focus_area"), e["step"]) for e in finished}
    started = [e for e in events if e["type"] == "step_start"]
    running = next(
        (e for e in reversed(started) if (e.get("focus_area"), e["step"]) not in done), None
    )
    return finished, running


st.title("AI Insights")
client = ui.service()
areas = {a["slug"]: a for a in ui.call(ui.focus_areas, client.url, client)}
names = {
    **{slug: a["name"] for slug, a in areas.items()},
    ALL: "All four, with an executive summary",
}
focus = st.selectbox(
    "Focus area", list(names), format_func=names.__getitem__, key="insights_focus_area"
)
if focus == ALL:
    st.caption("The four focus areas run side by side, then an executive summary across them.")
else:
    area = areas[focus]
    challenge, solution = st.columns(2)
    challenge.markdown(f"**Business challenge**\n\n{area['business_challenge']}")
    solution.markdown(f"**Agent solution**\n\n{area['agent_solution']}")
    with st.expander(f"The {len(area['steps'])} workflow steps"):
        st.markdown(
            "\n".join(
                f"{i}. **{s['name']}** — {s['description']}" for i, s in enumerate(area["steps"], 1)
            )
        )

models = ui.call(client.models)
labels = {m["name"]: f"{m['name']} — {m['description']}" for m in models}
model = st.selectbox("Model", list(labels), format_func=labels.__getitem__, key="insights_model")
with st.expander("Scope", expanded=False, icon=":material/filter_alt:"):
    filters = ui.scope_filters("insights")
question = st.text_input(
    "Question for the model (optional)", key="insights_question", max_chars=2000
)

run: dict[str, Any] | None = st.session_state.get("insights_run")
follower: Follower | None = st.session_state.get("insights_follower")
events, connection, ended = follower.snapshot() if follower else ([], "", True)
live = follower is not None and not ended
end = next((e for e in reversed(events) if e["type"] == "end"), None)
resumable = (
    run is not None and not live and end is not None and end["status"] in ("failed", "cancelled")
)

start_col, stop_col, resume_col, _ = st.columns([1, 1, 1, 5])
if start_col.button(
    "Start", type="primary", icon=":material/play_arrow:", disabled=live, key="insights_start"
):
    follow(client, ui.call(client.start_run, focus, model, filters, question))
    st.rerun()
stop = stop_col.button("Stop", icon=":material/stop:", disabled=not live, key="insights_stop")
if stop and run is not None:
    ui.call(client.cancel, run["id"])
    st.rerun()
resume = resume_col.button(
    "Resume", icon=":material/replay:", disabled=not resumable, key="insights_resume"
)
if resume and run is not None:
    follow(client, ui.call(client.resume, run["id"]), events)
    st.rerun()

if run is None:
    st.info("Choose a focus area, a model and a scope, then Start.")
    st.stop()


@st.fragment(run_every=0.5 if live else None)
def watch() -> None:
    """The run's steps as they finish (redrawn while the run lives)."""
    assert follower is not None and run is not None
    events, connection, ended = follower.snapshot()
    total = total_steps(areas, run["focus_area"])
    finished, running = progress(events, total)
    status = next((e["status"] for e in reversed(events) if "status" in e), run["status"])
    st.markdown(
        f"{ui.STATUS_ICON.get(status, '')} **{names.get(run['focus_area'], run['focus_area'])}** "
        f"with `{run['model']}` · scope: {ui.describe(run['filters'])} · run `{run['id']}`"
    )
    st.progress(
        min(len(finished) / total, 1.0), text=f"{len(finished)} of {total} steps · {status}"
    )
    ui.step_lines(finished, running if not ended else None)
    if connection:
        st.warning(connection, icon=":material/cloud_off:")
    mark = (run["id"], len(events))
    if ended and live and st.session_state.get("insights_shown") != mark:
        st.session_state["insights_shown"] = mark
        st.rerun()  # the whole page: buttons and the outcome below


watch()
if live:
    st.stop()
outcome = ui.call(client.run, run["id"])
st.session_state["insights_run"] = outcome
if outcome["status"] == "succeeded" and outcome.get("result"):
    st.success(f"Finished in {len(outcome['steps'])} steps.", icon=":material/check_circle:")
    ui.report_view(outcome["result"], f"insights_{outcome['id']}")
elif outcome["status"] == "failed":
    st.error(
        f"**The run failed:** {outcome['error'] or 'no reason was recorded.'}\n\n"
        f"Its {len(outcome['steps'])} finished steps are saved; Resume continues from the "
        "step that failed.",
        icon=":material/error:",
    )
elif outcome["status"] == "cancelled":
    st.warning(
        f"Stopped after {len(outcome['steps'])} finished steps. Resume continues from the next "
        "one without redoing them.",
        icon=":material/stop_circle:",
    )
elif outcome["status"] in ("queued", "running"):
    st.info(
        "The endpoint still has this run under way, but its event stream ended here. "
        "Open it from Insights History to see it finish."
    )
