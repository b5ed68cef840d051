"""What the dashboard's sections share: the endpoint client, scope filters, report views.

Every call to the endpoint goes through `call`, which turns a failure into a plain message
on the page (and stops only that page), so a service that is down or a run that failed
never breaks the app.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import pandas as pd
import streamlit as st

from app.client import AppSettings, Service, ServiceDown, ServiceError
from graphs.report import Report

T = TypeVar("T")
STATUS_ICON = {
    "queued": ":material/schedule:",
    "running": ":material/progress_activity:",
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/stop_circle:",
}
EARLIEST = datetime.date(1970, 1, 1)
DIMENSIONS = {  # scope filter -> the distribution that lists its values
    "segment": "customer_segment",
    "lifecycle_stage": "lifecycle_stage",
    "product_type": "product_type",
}


def service() -> Service:
    """The endpoint client of this browser session (settings read once per session)."""
    settings = AppSettings()
    key = (settings.finmatch_service_url, settings.finmatch_service_api_key)
    if st.session_state.get("service_key") != key:
        st.session_state["service"] = Service.from_settings(settings)
        st.session_state["service_key"] = key
    client: Service = st.session_state["service"]
    return client


def fail(e: ServiceError) -> NoReturn:
    """Say what went wrong on this page and stop the page (the app goes on)."""
    if isinstance(e, ServiceDown):
        st.error(f"**The agent endpoint is not reachable.** {e}", icon=":material/cloud_off:")
    else:
        st.error(str(e), icon=":material/error:")
    st.stop()


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the endpoint; on failure say so plainly and stop this page."""
    try:
        return fn(*args, **kwargs)
    except ServiceError as e:
        fail(e)


@st.cache_data(ttl=300, show_spinner=False)
def scope_values(url: str, _service: Service) -> dict[str, list[str]]:
    """The values the scope filters offer, from the unscoped distributions."""
    dist = _service.metrics({})["distributions"]["rows"]
    return {
        key: sorted(r["value"] for r in dist if r["dimension"] == dimension)
        for key, dimension in DIMENSIONS.items()
    }


@st.cache_data(ttl=300, show_spinner=False)
def focus_areas(url: str, _service: Service) -> list[dict[str, Any]]:
    """GET /focus-areas, kept five minutes (it changes only with a new release)."""
    return _service.focus_areas()


def scope_filters(prefix: str, *, container: Any = None) -> dict[str, Any]:
    """Widgets for the scope (segment, stage, product type, dates); return what is set."""
    client = service()
    values = call(scope_values, client.url, client)
    box = container or st
    cols = box.columns(5)
    chosen: dict[str, Any] = {}
    for col, (key, label) in zip(
        cols,
        (("segment", "Segment"), ("lifecycle_stage", "Lifecycle stage"),
         ("product_type", "Product type")),
        strict=False,
    ):  # fmt: skip
        options = ["All", *values.get(key, [])]
        picked = col.selectbox(label, options, key=f"{prefix}_{key}")
        if picked != "All":
            chosen[key] = picked
    # The picker's own bounds are ten years either side of today; records can be older.
    bounds = {"min_value": EARLIEST, "max_value": datetime.date.today() + datetime.timedelta(366)}
    date_from = cols[3].date_input("From", value=None, key=f"{prefix}_date_from", **bounds)
    date_to = cols[4].date_input("To", value=None, key=f"{prefix}_date_to", **bounds)
    if isinstance(date_from, datetime.date):
        chosen["date_from"] = date_from.isoformat()
    if isinstance(date_to, datetime.date):
        chosen["date_to"] = date_to.isoformat()
    if "date_from" in chosen and "date_to" in chosen and chosen["date_from"] > chosen["date_to"]:
        box.warning(
            f"'From' ({chosen['date_from']}) is after 'To' ({chosen['date_to']}); "
            "swap them to see records."
        )
        st.stop()
    return chosen


def cursors(prefix: str, view: Any) -> list[str | None]:
    """The cursors of the pages seen so far (None = the first page) for this `view`.

    Keyset pages can only be walked: the stack remembers how we got here, and a new view
    (other filters, another page size) starts again at the first page.
    """
    if st.session_state.get(f"{prefix}_view") != view:
        st.session_state[f"{prefix}_view"] = view
        st.session_state[f"{prefix}_cursors"] = [None]
    stack: list[str | None] = st.session_state[f"{prefix}_cursors"]
    return stack


def pager(
    prefix: str, stack: list[str | None], next_cursor: str | None, labels: tuple[str, str]
) -> None:
    """Back and forward buttons over a cursor stack (see `cursors`)."""
    back, forward, _ = st.columns([1, 1, 6])
    if back.button(
        labels[0], key=f"{prefix}_{labels[0].lower()}", icon=":material/chevron_left:",
        disabled=len(stack) == 1,
    ):  # fmt: skip
        stack.pop()
        st.rerun()
    if forward.button(
        labels[1], key=f"{prefix}_{labels[1].lower()}", icon=":material/chevron_right:",
        disabled=not next_cursor,
    ):  # fmt: skip
        stack.append(next_cursor)
        st.rerun()


def describe(filters: dict[str, Any]) -> str:
    """A scope in words: 'segment = Retail, from 2024-01-01', or 'all records'."""
    parts = [
        f"{k.replace('_', ' ')} = {v}"
        for k, v in filters.items()
        if k not in ("date_from", "date_to")
    ]
    if filters.get("date_from"):
        parts.append(f"from {filters['date_from']}")
    if filters.get("date_to"):
        parts.append(f"to {filters['date_to']}")
    return ", ".join(parts) or "all records"


def when(value: str | None) -> str:
    """An ISO time from the endpoint as local 'YYYY-MM-DD HH:MM:SS'."""
    if not value:
        return ""
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def step_lines(steps: list[dict[str, Any]], running: dict[str, Any] | None = None) -> None:
    """Finished steps with their detail lines, and the one under way.

    Steps are named with their focus area when the run spans several (a portfolio run).
    """
    areas = {s.get("focus_area") for s in [*steps, *([running] if running else [])]}

    def name(s: dict[str, Any]) -> str:
        return f"{s['focus_area']} · {s['step']}" if len(areas) > 1 else str(s["step"])

    for s in steps:
        st.markdown(f":material/check_circle: **{name(s)}** — {s.get('detail', '')}")
    if running is not None:
        st.markdown(f":material/progress_activity: **{name(running)}** — running")


def report_view(result: dict[str, Any], key: str, *, compact: bool = False) -> None:
    """A run's result: one report, or the executive summary and the four reports."""
    if "reports" in result:
        summary = result.get("summary", {})
        st.subheader(summary.get("title", "Executive summary"))
        st.markdown(summary.get("markdown", ""))
        reports = result.get("reports", {})
        if reports:
            tabs = st.tabs([Report(**r).title for r in reports.values()])
            for tab, (slug, data) in zip(tabs, reports.items(), strict=True):
                with tab:
                    one_report(Report(**data), f"{key}_{slug}", compact=compact)
        return
    one_report(Report(**result["report"]), key, compact=compact)


def one_report(report: Report, key: str, *, compact: bool = False) -> None:
    """A report: headline, sections, recommendations, findings, evidence with its SQL."""
    st.subheader(report.title)
    st.markdown(f"**{report.headline}**")
    st.caption(f"Scope: {report.scope} · narrative by {report.model_label} · {report.generated_at}")
    if report.ungrounded:
        st.warning(
            "Grounding check: these numbers in the narrative match no evidence: "
            + ", ".join(report.ungrounded)
            + ". Treat them as unverified."
        )
    if not compact:
        for section in report.sections:
            st.markdown(f"#### {section.title}\n\n{section.body}")
    if report.recommendations:
        st.markdown("#### Recommendations")
        st.markdown(
            "\n".join(
                f"{r.priority}. **{r.action}**"
                + (f" ({', '.join(r.finding_ids)})" if r.finding_ids else "")
                + f" — {r.rationale}"
                for r in sorted(report.recommendations, key=lambda r: r.priority)
            )
        )
    st.markdown("#### Findings")
    if report.findings:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "id": f.id,
                        "finding": f.title,
                        "claim": f.claim,
                        "strength": f.strength,
                        "effect": (
                            f"{f.effect_size:.3g} {f.effect_unit}"
                            if f.effect_size is not None
                            else ""
                        ),
                        "n": f.sample_size,
                        "evidence": ", ".join(f.evidence_ids),
                    }
                    for f in report.findings
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No finding passed the thresholds in this scope.")
    if compact:
        return
    st.markdown("#### Evidence — the SQL behind each number")
    for e in report.evidence:
        cut = " (truncated)" if e.truncated else ""
        rows = f"{e.row_count} row{'s' if e.row_count != 1 else ''}"
        with st.expander(f"{e.id} · {e.title} — {rows}{cut}"):
            if e.parameters:
                st.caption(f"Parameters: {e.parameters}")
            st.code(e.sql, language="sql")
    st.download_button(
        "Download report (markdown)",
        report.markdown(),
        file_name=f"{report.focus_area}-report.md",
        mime="text/markdown",
        key=f"{key}_download",
        icon=":material/download:",
    )
