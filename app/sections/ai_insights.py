"""AI Insights: pick a focus area, model and scope; start, stop, resume; watch the steps.

Start posts a run to the endpoint and follows its event stream in the background; the
progress below redraws twice a second from what has arrived, so Stop answers at once.
When the stream ends the page shows the report, or why the run stopped and Resume.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app import ui
from app.client import Follower, ServiceError

ALL = "all"
PORTFOLIO_STEPS = 2  # an 'all' run's own: Portfolio Data Preparation, Executive Summary


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
    """Steps a run of `focus` goes through (for 'all': the four areas and its own two)."""
    if focus == ALL:
        return sum(len(a["steps"]) for a in areas.values()) + PORTFOLIO_STEPS
    return len(areas[focus]["steps"])


def progress(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
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
# Once the stream has ended, what the endpoint has recorded decides what can be done.
outcome = ui.call(client.run, run["id"]) if run is not None and not live else None
if outcome is not None:
    st.session_state["insights_run"] = run = outcome
resumable = outcome is not None and outcome["status"] in ("failed", "cancelled")
unfollowed = outcome is not None and outcome["status"] in ("queued", "running")


def act(action: Any, run_id: str) -> dict[str, Any] | None:
    """Cancel or resume; None when the run changed state meanwhile (409: show it as it is)."""
    try:
        result: dict[str, Any] = action(run_id)
    except ServiceError as e:
        if e.status == 409:
            return None
        ui.fail(e)
    return result


start_col, stop_col, resume_col, _ = st.columns([1, 1, 1, 5])
if start_col.button(
    "Start", type="primary", icon=":material/play_arrow:", disabled=live or unfollowed,
    key="insights_start",
):  # fmt: skip
    follow(client, ui.call(client.start_run, focus, model, filters, question))
    st.rerun()
stop = stop_col.button(
    "Stop", icon=":material/stop:", disabled=not (live or unfollowed), key="insights_stop"
)
if stop and run is not None:
    act(client.cancel, run["id"])
    if follower is not None and not live:  # follow it to its end again
        follow(client, run, events)
    st.rerun()
resume = resume_col.button(
    "Resume", icon=":material/replay:", disabled=not resumable, key="insights_resume"
)
if resume and run is not None:
    resumed = act(client.resume, run["id"])
    follow(client, resumed or run, events)
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
    finished, running = progress(events)
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
    if ended and live:
        st.rerun()  # the whole page: the buttons and the outcome below


watch()
if outcome is None:
    st.stop()
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
elif unfollowed:
    st.info(
        f"The endpoint still has this run {outcome['status']}, but its event stream was "
        "lost here. Follow it again to see it finish (or Stop it).",
        icon=":material/cloud_off:",
    )
    if st.button("Follow again", icon=":material/sync:", key="insights_follow"):
        follow(client, outcome, events)
        st.rerun()
