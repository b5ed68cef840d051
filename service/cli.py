"""The `finmatch` command line: seed, load, metrics and guarded SQL.

Exit codes: 0 success, 1 an error the message explains (missing warehouse, bad file),
2 bad usage or a query the SQL guard rejected (the reason is on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools import generator
from tools.settings import MAX_DAYS, MAX_ROW_CAP, MAX_SQL_TIMEOUT_S
from tools.text import clip, hide_password

if TYPE_CHECKING:  # the models load when a command needs them: a traced run's writer
    from pydantic import ValidationError

    from tools.evidence import Evidence  # starts sooner (service.trace_writer)

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """An error to print on stderr, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        """Keep the message and exit code."""
        super().__init__(message)
        self.code = code


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _warehouse_url(args: argparse.Namespace) -> str:
    from tools.settings import WarehouseSettings

    return args.warehouse or WarehouseSettings().finmatch_warehouse


def _duckdb_target(args: argparse.Namespace, command: str) -> Path:
    from tools.warehouse import duckdb_path

    url = _warehouse_url(args)
    if not url.startswith("duckdb://"):
        raise CliError(
            f"`finmatch {command}` writes the embedded DuckDB warehouse, but the warehouse is "
            f"{url}. Pass --warehouse duckdb:///path/to/file.duckdb; a Databricks table is "
            "filled by the Fivetran connector.",
            EXIT_USAGE,
        )
    return duckdb_path(url)


def _open(args: argparse.Namespace) -> Any:
    from tools.warehouse import open_warehouse

    return open_warehouse(_warehouse_url(args))


# -- formatting ---------------------------------------------------------------------------
# Widest a value is shown in a terminal table (`--json` gives every value whole).
CELL_CHARS = 60


def _fmt(value: Any) -> str:
    from tools.text import clip

    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.2f}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    # Text from the table: on one line, cut, its control characters shown, not obeyed.
    return clip(value, CELL_CHARS)


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append(
            "  ".join(
                v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(out)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).replace("-", "", 1).isdigit()


_KPI_LABELS = {
    "records": "Records",
    "avg_recommendation_score": "Avg recommendation score",
    "avg_satisfaction_score": "Avg customer satisfaction",
    "avg_churn_probability": "Avg churn probability",
    "total_product_sales": "Total product sales",
    "acceptance_rate": "Recommendation acceptance rate",
}
_FINANCIAL_LABELS = {
    "avg_transaction_value": "Avg transaction value",
    "avg_account_balance": "Avg account balance",
    "avg_transaction_count": "Avg transaction count",
    "total_transaction_count": "Total transactions",
}
_DIMENSIONS = {
    "recommendation_status": "Recommendation status",
    "affinity_band": "Product affinity",
    "lifecycle_stage": "Customer lifecycle stage",
    "product_type": "Top product types",
    "customer_segment": "Top customer segments",
}


def render_dashboard(evidence: dict[str, Evidence], scope: str) -> str:
    """Return the dashboard metrics as text for a terminal."""
    kpis = evidence["kpis"].rows[0] if evidence["kpis"].rows else {}
    out = [f"FinMatch dashboard ({scope}; {evidence['kpis'].warehouse})", ""]
    for title, labels in (
        ("Key performance indicators", _KPI_LABELS),
        ("Financial metrics", _FINANCIAL_LABELS),
    ):
        out.append(title)
        width = max(len(v) for v in labels.values())
        for key, label in labels.items():
            value = kpis.get(key)
            shown = (
                f"{100 * value:.1f}%"
                if key.endswith("_rate") and value is not None
                else _fmt(value)
            )
            out.append(f"  {label.ljust(width)}  {shown}")
        out.append("")
    rows = evidence["distributions"].rows
    for dim, title in _DIMENSIONS.items():
        part = [r for r in rows if r["dimension"] == dim]
        if not part:
            continue
        out.append(title)
        width = max(len(_fmt(r["value"])) for r in part)
        for r in part:
            bar = "#" * round(40 * (r["share"] or 0))
            value, share = _fmt(r["value"]).ljust(width), 100 * r["share"]
            out.append(f"  {value}  {r['records']:>12,}  {share:5.1f}%  {bar}")
        out.append("")
    ms = sum(e.elapsed_ms for e in evidence.values())
    out.append(f"{len(evidence)} queries, {ms:,.0f} ms in the warehouse.")
    return "\n".join(out)


# -- commands -----------------------------------------------------------------------------
def cmd_seed(args: argparse.Namespace) -> int:
    """Generate the synthetic table."""
    from tools.ingest import seed_table, table_rows

    path = _duckdb_target(args, "seed")
    if args.if_empty and (rows := table_rows(path)):
        _out(f"{path} already holds {rows:,} records; left as it is (--if-empty).")
        return 0
    try:
        generator.check_rows(args.rows)
        generator.check_seed(args.seed)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    _err(f"Generating {args.rows:,} synthetic records (seed {args.seed}) into {path} ...")
    result = seed_table(path, rows=args.rows, seed=args.seed, progress=sys.stderr.isatty())
    _out(f"Seeded {result.rows:,} records into {path} in {result.elapsed_s:.1f} s.")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """Load a CSV or Parquet file."""
    from tools.ingest import LoadError, load_file

    path = _duckdb_target(args, "load")
    _err(f"Validating and loading {args.file} into {path} ...")
    try:
        result = load_file(path, Path(args.file), progress=sys.stderr.isatty())
    except LoadError as e:
        raise CliError(str(e)) from e
    _out(
        f"Loaded {result.rows:,} records from {args.file} into {path} in {result.elapsed_s:.1f} s."
    )
    return 0


def _filters(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from tools.metrics import Filters

    try:
        return Filters(
            segment=args.segment,
            lifecycle_stage=args.stage,
            product_type=args.product_type,
            date_from=args.date_from,
            date_to=args.date_to,
        )
    except ValidationError as e:
        raise CliError("; ".join(err["msg"] for err in e.errors()), EXIT_USAGE) from e


def _check_scope(warehouse: Any, filters: Any) -> None:
    """Refuse a scope value the data does not hold, as the endpoint does (exit 2)."""
    from tools.metrics import ScopeError, check_scope

    try:
        check_scope(warehouse, filters)
    except ScopeError as e:
        raise CliError(str(e), EXIT_USAGE) from e


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the dashboard metrics (or one catalog metric)."""
    from tools.metrics import CATALOG, dashboard, run_metric

    filters = _filters(args)
    if args.list:
        for m in CATALOG.values():
            _out(f"{m.id:28} {m.title}")
        return 0
    warehouse = _open(args)
    try:
        _check_scope(warehouse, filters)
        if args.metric:
            if args.metric not in CATALOG:
                raise CliError(
                    f"No metric {args.metric!r}; choose one of: {', '.join(CATALOG)}", EXIT_USAGE
                )
            ev = run_metric(warehouse, args.metric, filters)
            _out(
                ev.model_dump_json(indent=2)
                if args.json
                else f"{ev.title}\n\n{_table(ev.columns, ev.rows)}"
            )
            return 0
        result = dashboard(warehouse, filters)
    finally:
        warehouse.close()
    if args.json:
        _out(json.dumps({k: v.model_dump() for k, v in result.items()}, indent=2, default=str))
    else:
        _out(render_dashboard(result, filters.describe()))
    return 0


def _where(insight: Any) -> str:
    if insight.kind == "shift":
        return f"from {insight.value}"
    where = f"{insight.dimension_label} = {clip(insight.value)}"
    if insight.kind == "cell":
        where += f" and {insight.second_label} = {clip(insight.second_value)}"
    return where


def cmd_insights(args: argparse.Namespace) -> int:
    """Print what the insight engine finds: data problems, then insights by impact."""
    import dataclasses

    from graphs.engine import measured, quality_findings, quality_rows
    from graphs.insights import MIN_GROUP, find
    from tools.scans import quality, scan

    filters = _filters(args)
    warehouse = _open(args)
    try:
        _check_scope(warehouse, filters)
        problems = quality(warehouse, filters)
        scanned = scan(warehouse, filters)
    finally:
        warehouse.close()
    found = find(scanned)
    shown = found[: args.top]
    if args.json:
        body = {
            "scope": filters.describe(),
            "records": scanned.records,
            "quality": {k: v for k, v in dataclasses.asdict(problems).items() if k != "sql"},
            "insights": [{**dataclasses.asdict(i), "impact": i.impact} for i in shown],
            "found": len(found),
        }
        _out(json.dumps(body, indent=2, default=str))
        return 0
    _out(f"Insights in {filters.describe()} ({scanned.records:,} recommendations)")
    if scanned.records < 2 * MIN_GROUP:
        _out(
            "No recommendation matches this scope: widen it."
            if not scanned.records
            else f"Too few records to compare groups: {2 * MIN_GROUP} are needed, "
            f"{MIN_GROUP} on each side of a comparison. Widen the scope."
        )
        return 0
    # The problems as the reports state them (one sentence a check), on one line each.
    told = [f.claim for f in quality_findings({"id": "", "rows": quality_rows(problems)})]
    _out("Data: " + (" ".join(told) if told else "no problems found"))
    _out("")
    for rank, i in enumerate(shown, start=1):
        money = f"  worth ${i.money:,.0f}" if i.money else ""
        _out(
            f"{rank:>3}. {_where(i)}: {clip(i.measure_label, 60)} {measured(i.value_in, i.unit)} "
            f"against {measured(i.value_rest, i.unit)} "
            f"({'predicted' if i.kind == 'cell' else 'before' if i.kind == 'shift' else 'the rest'}"
            f"), n = {i.n:,}, q = {i.q:.1g}{money}"
        )
    if len(found) > len(shown):
        _out(f"... {len(found) - len(shown):,} more (--top N)")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one guarded read-only query."""
    from tools.guard import GuardRejection, run_sql
    from tools.settings import WarehouseSettings

    settings = WarehouseSettings()
    warehouse = _open(args)
    try:
        ev = run_sql(
            warehouse,
            args.query,
            row_cap=args.max_rows or settings.finmatch_sql_row_cap,
            timeout_s=args.timeout or settings.finmatch_sql_timeout_s,
        )
    except GuardRejection as e:
        raise CliError(str(e), EXIT_USAGE) from e
    finally:
        warehouse.close()
    if args.json:
        _out(ev.model_dump_json(indent=2))
    else:
        _out(_table(ev.columns, ev.rows))
        note = (
            f" (cut at the row cap of {args.max_rows or settings.finmatch_sql_row_cap})"
            if ev.truncated
            else ""
        )
        _err(f"{ev.row_count:,} row(s){note}, {ev.elapsed_ms:,.0f} ms.")
    return 0


class _Progress:
    """Live step display on stderr: a line per finished step with its detail."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.status: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        area = event.get("focus_area", "")
        if event.get("type") == "step_start":
            text = f"[bold]{area}[/]: {event['step']} ..."
            if self.status is None and self.console.is_terminal:
                self.status = self.console.status(text)
                self.status.start()
            elif self.status is not None:
                self.status.update(text)
            elif not self.console.is_terminal:
                self.console.print(f"> {area}: {event['step']}")
        elif event.get("type") == "step_finish":
            position = f"[{event['index']}/{event['total']}] " if "index" in event else ""
            # A resumed run first lists the steps an earlier attempt finished.
            done = "[dim]kept[/]" if event.get("kept") else "[green]done[/]"
            self.console.print(
                f"{done} {position}{area}: {event['step']} - {event.get('detail', '')}"
            )

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _write(path: Path, text: str) -> None:
    """Write a file whole or not at all (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _save_reports(result: Any) -> list[Path]:
    from graphs.report import Report
    from tools.settings import project_home

    folder = project_home() / "reports" / result.thread_id
    folder.mkdir(parents=True, exist_ok=True)
    reports = result.output.get("reports") or (
        {result.output["focus_area"]: result.output["report"]} if "report" in result.output else {}
    )
    paths = []
    for slug, data in reports.items():
        report = Report(**data)
        _write(folder / f"{slug}.json", report.model_dump_json(indent=2))
        path = folder / f"{slug}.md"
        _write(path, report.markdown())
        paths.append(path)
    if "summary" in result.output:
        path = folder / "executive-summary.md"
        summary = result.output["summary"]
        _write(
            path, f"# {summary['title']}\n\n_Scope: {summary['scope']}._\n\n{summary['markdown']}\n"
        )
        paths.insert(0, path)
    return paths


def cmd_analyze(args: argparse.Namespace) -> int:
    """Run a focus-area agent (or all four) with live progress."""
    from service.trace_writer import TraceWriter
    from service.tracking import tracking_uri

    # Traced, the spans are recorded here and written by a process started first thing,
    # which imports MLflow and opens its store on the other core while this one imports
    # the graphs and runs them (service.trace_writer).
    writer = TraceWriter(tracking_uri()) if _tracing(args) else None
    try:
        return _analyze(args, writer)
    finally:
        if writer:
            writer.close()  # it finishes writing on its own; the command need not wait


def _analyze(args: argparse.Namespace, writer: Any) -> int:
    import asyncio

    from graphs.areas import FOCUS_AREAS
    from graphs.context import Context
    from graphs.models import UnknownModel, check_model
    from graphs.report import Report
    from graphs.tracing import Recording
    from service.runs import ThreadError, run_focus
    from service.trace_writer import TraceWriteError

    if args.resume and not args.thread:
        raise CliError("--resume needs --thread ID: the thread of the run to resume.", EXIT_USAGE)
    try:
        check_model(args.model)
    except UnknownModel as e:
        raise CliError(str(e), EXIT_USAGE) from e
    context = Context(
        model=args.model,
        warehouse=_warehouse_url(args),
        segment=args.segment,
        lifecycle_stage=args.stage,
        product_type=args.product_type,
        date_from=args.date_from.isoformat() if args.date_from else None,
        date_to=args.date_to.isoformat() if args.date_to else None,
    )
    from graphs.resources import warehouse_for

    # The scope is checked before anything runs: its dates, then its values in the data.
    _check_scope(warehouse_for(context.warehouse), _filters(args))
    thread_id = args.thread or str(uuid.uuid4())  # known here, so a stop can name it
    progress = _Progress(quiet=False)
    recording = Recording() if writer else None
    try:
        result = asyncio.run(
            run_focus(
                args.focus,
                context,
                thread_id=thread_id,
                resume=args.resume,
                question=args.question or "",
                on_event=progress,
                recording=recording,
                tracing=False,
            )
        )
        if writer and recording and recording.spans:
            try:
                result.trace_id, result.traces = writer.write(recording), writer.uri
            except TraceWriteError as e:  # the report stands
                _err(f"warning: the trace was not recorded in {hide_password(writer.uri)}: {e}")
    except ThreadError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    except KeyboardInterrupt:
        progress.stop()
        _err(
            "stopped. Finished steps are saved: resume with `finmatch analyze --focus "
            f"{args.focus} --thread {thread_id} --resume`."
        )
        return 130
    finally:
        progress.stop()
    if result.status != "succeeded":
        _err(f"error: the run failed: {result.error}")
        _err(
            f"Finished steps are saved. Resume with `finmatch analyze --focus {args.focus} "
            f"--thread {result.thread_id} --resume` (optionally with another --model)."
        )
        return EXIT_ERROR
    paths = _save_reports(result)
    if args.json:
        out = result.output
        if "reports" in out:
            _out(
                json.dumps(
                    {
                        "reports": out["reports"],
                        "summary": out["summary"],
                        "thread_id": result.thread_id,
                        "trace_id": result.trace_id,
                    },
                    indent=2,
                )
            )
        else:
            _out(
                json.dumps(
                    {**out["report"], "thread_id": result.thread_id, "trace_id": result.trace_id},
                    indent=2,
                )
            )
        return 0
    if args.markdown:
        for path in paths:
            _out(path.read_text())
        return 0
    reports = result.output.get("reports") or {result.output["focus_area"]: result.output["report"]}
    _out("")
    for data in sorted(reports.values(), key=lambda r: list(FOCUS_AREAS).index(r["focus_area"])):
        report = Report(**data)
        flag = f"  ({len(report.ungrounded)} ungrounded numbers)" if report.ungrounded else ""
        _out(f"{report.title}\n  {report.headline}{flag}")
    _out("")
    if "summary" in result.output:
        _out(f"Executive summary: {paths[0]}")
    _out(f"Reports: {paths[0].parent}")
    _out(f"Thread:  {result.thread_id}")
    if result.trace_id:
        _out(f"Trace:   {result.trace_id} (see it: {_mlflow_ui(result.traces)})")
    return 0


def _tracing(args: argparse.Namespace) -> bool:
    """Whether a run records a trace: not with --no-trace, nor with FINMATCH_TRACING=false."""
    from service.tracking import TracingSettings
    from tools.settings import current

    return not args.no_trace and current(TracingSettings).finmatch_tracing


def _mlflow_ui(uri: str) -> str:
    """Return the command that shows the traces at `uri` (MLflow's, from this environment)."""
    beside = Path(sys.executable).parent / "mlflow"
    command = str(beside) if beside.exists() else f"{sys.executable} -m mlflow"
    return f"{command} ui --backend-store-uri {uri}"


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete threads (checkpoints and run history) past their retention."""
    import asyncio

    from service.api import ServiceSettings
    from service.retention import RetentionSettings, prune, store_at
    from service.runs import open_checkpointer
    from tools.settings import project_home

    settings = RetentionSettings()
    days = {
        "finmatch_retention_days": args.retention_days or settings.finmatch_retention_days,
        "finmatch_resumable_days": args.resumable_days or settings.finmatch_resumable_days,
    }
    settings = settings.model_copy(update=days)
    service_db = ServiceSettings().finmatch_service_db
    store = store_at(Path(service_db) if service_db else project_home() / "service.sqlite")

    async def go() -> Any:
        async with open_checkpointer() as saver:
            return await prune(saver, store, settings, dry_run=args.dry_run)

    try:
        result = asyncio.run(go())
    finally:
        if store is not None:
            store.close()
    verb = "would delete" if args.dry_run else "deleted"
    for thread in result.threads:
        state = "finished" if thread.finished else "resumable"
        when = f"{thread.last_active:%Y-%m-%d %H:%M}"
        _out(f"{verb} thread {thread.thread_id} ({state}, last active {when})")
    _out(
        f"{verb} {len(result.threads):,} threads"
        + (f" and {result.runs:,} runs of the service's history" if result.runs else "")
        + f"; kept {result.kept:,} (finished: {settings.finmatch_retention_days:g} days, "
        f"resumable: {settings.finmatch_resumable_days:g} days; queued and running runs "
        "always). Saved reports stay in place."
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the eval suite, print its scores and fail when one is under its threshold."""
    # The eval suite sits above the service; the command line is where it is entered.
    from evals.runner import THRESHOLDS, evaluate, render, render_summary, summarize
    from evals.scenarios import SCENARIOS
    from graphs.models import UnknownModel, check_model

    try:
        check_model(args.model)
    except UnknownModel as e:
        raise CliError(str(e), EXIT_USAGE) from e
    unknown = [s for s in args.scenario or [] if s not in SCENARIOS]
    if unknown:
        raise CliError(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}",
            EXIT_USAGE,
        )
    outcomes, run_id = evaluate(
        args.model, args.focus or (), args.scenario or (), judge=args.judge or ""
    )
    suite = summarize(outcomes)
    if args.runs:
        _out(render(outcomes) + "\n")
    _out(render_summary(suite))
    failed = [o for o in outcomes if o.failures]
    for o in failed:
        _out(f"FAIL {o.focus} on {o.scenario}: {'; '.join(o.failures)}")
    below = len(failed) + len(suite.failures)
    _out(
        f"\nMLflow run {run_id} (experiment finmatch-evals); thresholds in {THRESHOLDS.name}: "
        + (f"{below} below" if below else "all met")
    )
    return EXIT_ERROR if below else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the agent endpoint with uvicorn until interrupted."""
    import uvicorn

    from service.api import ServiceSettings, check_bind, create_app

    settings = ServiceSettings()
    try:
        check_bind(args.host, settings)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    _err(f"FinMatch agent endpoint on http://{args.host}:{args.port} (docs: /docs)")
    app = create_app(settings, warehouse=args.warehouse or "")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            request_shutdown = getattr(app.state, "request_shutdown", None)
            if request_shutdown is not None:  # the runs stop first; then the streams end
                request_shutdown()

    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30
    )
    Server(config).run()
    return 0


def _port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port`.

    Bound as the servers bind (SO_REUSEADDR, as uvicorn and Streamlit do): a port a
    stopped server left in TIME_WAIT is free for them, so it is free here too.
    """
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def cmd_app(args: argparse.Namespace) -> int:
    """Run the agent endpoint and the dashboard together until interrupted."""
    import importlib.util
    import os
    import signal
    import subprocess
    import time

    import httpx

    from service.api import ServiceSettings, check_bind

    try:  # the dashboard can start runs and read the data: the endpoint's rule holds
        check_bind(args.host, ServiceSettings())
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    main_script = importlib.util.find_spec("app.main")
    if main_script is None or main_script.origin is None:
        raise CliError("the dashboard (app/main.py) is not installed with this project")
    if args.service_url and args.warehouse:
        raise CliError(
            "--warehouse is for the endpoint `finmatch app` starts; the one at --service-url "
            "reads its own warehouse",
            EXIT_USAGE,
        )
    ports = [(args.port, "--port")] + (
        [] if args.service_url else [(args.service_port, "--service-port")]
    )
    for port, option in ports:
        if _port_taken(port):
            raise CliError(f"port {port} is taken on this machine; choose another with {option}")
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C reaches this process only, which stops both in order.
        child = subprocess.Popen(command, env=env, start_new_session=True)
        children.append((name, child))
        return child

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        url = args.service_url
        if not url:
            url = f"http://127.0.0.1:{args.service_port}"
            keys = ServiceSettings().keys()
            if keys and not env.get("FINMATCH_SERVICE_API_KEY"):
                env["FINMATCH_SERVICE_API_KEY"] = keys[0]
            serve = [sys.executable, "-m", "service.cli", "serve", "--port", str(args.service_port)]
            endpoint = start(
                "agent endpoint",
                serve + (["--warehouse", args.warehouse] if args.warehouse else []),
            )
            _err(f"starting the agent endpoint on {url} ...")
            deadline = time.monotonic() + 60
            while True:
                if endpoint.poll() is not None:
                    raise CliError(
                        f"the agent endpoint exited with code {endpoint.returncode} before it "
                        "was ready (its message is above)"
                    )
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise CliError(f"the agent endpoint did not answer at {url} within 60 s")
                time.sleep(0.2)  # waiting for the child to bind its port
        env["FINMATCH_SERVICE_URL"] = url
        start("dashboard", [
            sys.executable, "-m", "streamlit", "run", main_script.origin,
            "--server.address", args.host, "--server.port", str(args.port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer",
        ])  # fmt: skip
        _err(
            f"FinMatch dashboard on http://{args.host}:{args.port} (agent endpoint {url}); "
            "open it in a browser. Ctrl-C stops it"
        )
        while True:  # until one of them exits
            pid, status = os.wait()
            for name, child in children:
                if child.pid == pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    raise CliError(
                        f"the {name} exited with code {child.returncode}; the other was stopped too"
                    )
    except KeyboardInterrupt:
        return 0
    finally:
        # Stop both whatever else arrives meanwhile (a second Ctrl-C, another SIGTERM).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for _, child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)


def cmd_source_api(args: argparse.Namespace) -> int:
    """Serve the synthetic FPR source API with uvicorn until interrupted."""
    import duckdb
    import uvicorn

    from fpr_api.app import create_app
    from fpr_api.settings import SourceApiSettings, key_file
    from fpr_api.store import SourceStore

    settings = SourceApiSettings()
    path = Path(args.db) if args.db else settings.db_path()
    existed = path.exists() and not args.reset
    try:
        store = SourceStore.open(path, records=args.records, seed=args.seed, reset=args.reset)
    except duckdb.Error as e:
        raise CliError(f"Cannot open the source API's records file {path}: {e}") from e
    count = store.count() or 0
    if existed and args.records != generator.DEFAULT_ROWS and count != args.records:
        _err(f"note: serving the {count:,} records already in {path}; --reset regenerates them")
    _err(
        f"FPR source API on http://{args.host}:{args.port} serving {count:,} records from "
        f"{path} (spec: /fpr_api_spec)"
    )
    if not (settings.fpr_api_key and settings.fpr_api_key.get_secret_value()):
        _err(f"x-api-key: the local key in {key_file()} (set FPR_API_KEY to choose one)")
    app = create_app(store, settings.key())
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        store.close()
    return 0


def cmd_source_change(args: argparse.Namespace) -> int:
    """Ask the running source API to update and add records."""
    import httpx

    from fpr_api.settings import SourceApiSettings

    if not args.update and not args.add:
        raise CliError("nothing to change: pass --update N and/or --add N", EXIT_USAGE)
    settings = SourceApiSettings()
    url = (args.url or settings.fpr_api_url).rstrip("/")
    body = {"update": args.update, "add": args.add, "seed": args.seed}
    try:
        response = httpx.post(
            f"{url}/admin/changes", json=body, headers={"x-api-key": settings.key()}, timeout=60
        )
    except httpx.HTTPError as e:
        raise CliError(
            f"Cannot reach the source API at {url} ({e}); start it with `finmatch source-api`."
        ) from e
    if response.status_code != 200:
        raise CliError(f"The source API answered {response.status_code}: {response.text[:300]}")
    done = response.json()
    _out(
        f"updated {done['updated']:,} and added {done['added']:,} records at {url} "
        f"(last_updated_epoch {done['last_updated_epoch']}); the source holds "
        f"{done['records']:,} records"
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Run the connector against the source API and apply what it fetched to the warehouse."""
    from fpr_api.settings import SourceApiSettings
    from tools.sync import SyncError, sync

    target = _duckdb_target(args, "sync")
    settings = SourceApiSettings()
    configuration = {
        "base_url": (args.url or settings.fpr_api_url).rstrip("/"),
        "api_key": settings.key(),
        "page_size": str(args.page_size),
        "max_retries": str(args.max_retries),
        "backoff_seconds": str(args.backoff),
        "timeout_seconds": str(args.timeout),
    }
    on_line = None if args.quiet else _err
    try:
        result = sync(target, configuration, full=args.full, replace=args.replace, on_line=on_line)
    except SyncError as e:
        raise CliError(str(e)) from e
    applied = result.applied
    _out(
        f"fetched {result.fetched:,} records in {result.pages:,} pages from "
        f"{configuration['base_url']} in {result.connector_s:.1f} s"
        + (
            f"; {result.rejected:,} rejected (see {result.landing}, table fpr_rejected_records)"
            if result.rejected
            else ""
        )
    )
    if applied.written:
        how = (
            "replaced with the synced records"
            if applied.replaced
            else (f"{applied.inserted:,} new, {applied.updated:,} updated")
        )
        _out(
            f"fpr_records in {target}: {how}; {applied.rows:,} rows "
            f"(customer snapshot rebuilt, {applied.elapsed_s:.1f} s)"
        )
    elif not result.held_back:
        _out(f"fpr_records in {target} is up to date ({applied.rows:,} rows); nothing written")
    else:
        _out(f"fpr_records in {target}: nothing new written ({applied.rows:,} rows)")
    if result.held_back:
        _out(
            f"{result.held_back:,} records held back: the source sent them breaking the "
            "contract, so they are missing or stale here; every sync asks for them again "
            f"(reasons in {result.landing}, table fpr_rejected_records)"
        )
    return 0


THREAD_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _thread(text: str) -> str:
    """A thread id: a name in the checkpoints and in file names, so a plain one."""
    if not THREAD_ID.fullmatch(text) or not text.strip("."):
        raise argparse.ArgumentTypeError(
            f"{clip(text, 40)!r} is not a thread id; use 1 to 128 of letters, digits, "
            "'.', '_' or '-' (not only dots), as printed when the run started"
        )
    return text


def _number(kind: str, low: float, high: float) -> Callable[[str], float]:
    """An argument type: a finite number above `low`, at most `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low < value <= high):
            raise argparse.ArgumentTypeError(
                f"{clip(text, 40)!r} is not a number of {kind} between {low:g} and {high:g}"
            )
        return value

    return parse


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        value = int(text) if re.fullmatch(r"[+-]?[0-9]{1,19}", text.strip()) else None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{clip(text, 40)!r} is not a whole number from {low} to {high}"
            )
        return value

    return parse


_days = _number("days", 0, MAX_DAYS)
_seconds = _number("seconds", 0, MAX_SQL_TIMEOUT_S)
_port = _whole(1, 65535)


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--warehouse",
        metavar="URL",
        help="warehouse URL (default: FINMATCH_WAREHOUSE, else the embedded "
        "duckdb:///<project>/.finmatch/fpr.duckdb); databricks:// uses DATABRICKS_* and UC_*",
    )
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--segment", help="only this customer_segment, e.g. Retail")
    scope.add_argument("--stage", help="only this customer_lifecycle_stage, e.g. Engaged")
    scope.add_argument("--product-type", help="only this product_type, e.g. Mortgage")
    scope.add_argument("--date-from", type=_date, help="recommendations on or after YYYY-MM-DD")
    scope.add_argument("--date-to", type=_date, help="recommendations on or before YYYY-MM-DD")

    parser = argparse.ArgumentParser(
        prog="finmatch",
        description="FinMatch Agents: bank product-matching analytics over fpr_records.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "seed",
        parents=[common],
        help="generate synthetic fpr_records",
        description="Replace fpr_records in the embedded warehouse with "
        "deterministic synthetic data (see tools/generator.py for what is planted).",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=generator.DEFAULT_ROWS,
        help="records to generate (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=generator.DEFAULT_SEED, help="random seed (default %(default)s)"
    )
    p.add_argument(
        "--if-empty",
        action="store_true",
        help="only seed when the warehouse has no fpr_records yet (keeps loaded data)",
    )
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser(
        "load",
        parents=[common],
        help="load a CSV or Parquet file",
        description="Validate FILE against the fpr_records schema and, if it "
        "passes, replace the table with it in one transaction. A bad file is "
        "rejected with every problem listed and the table is left as it was.",
    )
    p.add_argument("file", metavar="FILE", help="a .csv (with a header row) or .parquet file")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "metrics",
        parents=[common, scope],
        help="print the dashboard metrics",
        description="Print the KPIs, financial metrics and distributions, all "
        "computed in the warehouse; or one catalog metric with --metric.",
    )
    p.add_argument("--json", action="store_true", help="print the evidence as JSON")
    p.add_argument("--metric", metavar="ID", help="run one catalog metric instead of the dashboard")
    p.add_argument("--list", action="store_true", help="list the catalog metrics and exit")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser(
        "insights",
        parents=[common, scope],
        help="list what the insight engine finds in the data",
        description="Scan every dimension, pair of categories and month of the scope in the "
        "warehouse, test each against the rest (false discovery rate 1%%), and list the "
        "data's problems, then the insights by impact.",
    )
    p.add_argument("--top", type=_whole(1, 1000), default=20, help="insights shown (20)")
    p.add_argument("--json", action="store_true", help="print the scan's findings as JSON")
    p.set_defaults(func=cmd_insights)

    from graphs.areas import FOCUS_AREAS

    p = sub.add_parser(
        "analyze",
        parents=[common, scope],
        help="run a focus-area agent",
        description="Run a focus-area agent (or all four and an executive summary) with live "
        "progress. Every run has a thread id; a failed or stopped run resumes with "
        "--thread ID --resume.",
    )
    p.add_argument("--focus", required=True, choices=[*FOCUS_AREAS, "all"])
    p.add_argument("--model", default="offline", help="model name (default offline)")
    p.add_argument("--question", help="a question the narrative should answer")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the Report as JSON")
    out.add_argument("--markdown", action="store_true", help="print the report as markdown")
    p.add_argument("--thread", type=_thread, help="thread id (default: a new one)")
    p.add_argument("--resume", action="store_true", help="continue the run on --thread")
    p.add_argument("--no-trace", action="store_true", help="do not record an MLflow trace")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "sql",
        parents=[common],
        help="run one guarded read-only query",
        description="Run one SELECT over fpr_records (DuckDB SQL). The SQL "
        "guard rejects anything else with exit code 2 and the reason on stderr.",
    )
    p.add_argument(
        "query",
        metavar="SQL",
        help='e.g. "SELECT customer_segment, count(*) FROM fpr_records GROUP BY 1"',
    )
    p.add_argument("--json", action="store_true", help="print the evidence as JSON")
    p.add_argument(
        "--max-rows",
        type=_whole(1, MAX_ROW_CAP),
        help="row cap (default FINMATCH_SQL_ROW_CAP or 1000)",
    )
    p.add_argument("--timeout", type=_seconds, help="statement timeout in seconds (default 30)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the agent endpoint (FastAPI; docs at /docs)",
        description="Serve the agent endpoint. Beyond loopback it needs FINMATCH_API_KEYS.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "app",
        parents=[common],
        help="run the dashboard (Streamlit) with an agent endpoint of its own",
        description="Start `finmatch serve` on 127.0.0.1 (unless --service-url names one) and "
        "the Streamlit dashboard that talks to it; Ctrl-C stops both.",
    )
    p.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8501, help="dashboard port (default 8501)")
    endpoint = p.add_mutually_exclusive_group()
    endpoint.add_argument(
        "--service-port", type=_port, default=8000, help="agent endpoint port (default 8000)"
    )
    endpoint.add_argument(
        "--service-url",
        help="use this running agent endpoint instead of starting one (its key: "
        "FINMATCH_SERVICE_API_KEY)",
    )
    p.set_defaults(func=cmd_app)

    p = sub.add_parser(
        "eval",
        help="run the eval suite (scenarios x focus areas) and check the thresholds",
        description="Run every focus area on planted tables (one pattern written in by SQL, "
        "or nothing: shuffled columns, uniform values) whose truth is read back by SQL; score "
        "each report on whether a statement names the planted entity and measure with its "
        "number, what it invents, grounding, steps, sections and guard, with "
        "mlflow.genai.evaluate; print recall, invented and grounding per scenario, log to "
        "MLflow and exit 1 when a threshold is missed (evals/thresholds.json).",
    )
    p.add_argument("--model", default="offline", help="model name (default offline)")
    p.add_argument(
        "--focus", nargs="+", choices=list(FOCUS_AREAS), help="focus areas (default all)"
    )
    p.add_argument("--scenario", nargs="+", metavar="NAME", help="scenarios (default all)")
    p.add_argument(
        "--runs", action="store_true", help="also print the scores of every area x scenario"
    )
    p.add_argument(
        "--judge",
        metavar="MODEL_URI",
        help="add LLM judges of relevance and actionability that call this model, e.g. "
        "databricks:/databricks-claude-sonnet-4",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "prune",
        help="delete old threads: their checkpoints and run history",
        description="Delete the threads whose last activity is older than their retention: "
        "a finished run's after FINMATCH_RETENTION_DAYS (30), one that can still be resumed "
        "after FINMATCH_RESUMABLE_DAYS (90). Their checkpoints go, and their runs and events "
        "in the service's history; queued and running runs and saved reports are kept.",
    )
    p.add_argument("--retention-days", type=_days, help="override FINMATCH_RETENTION_DAYS")
    p.add_argument("--resumable-days", type=_days, help="override FINMATCH_RESUMABLE_DAYS")
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "source-api",
        help="serve the synthetic FPR source API the connector reads",
        description="Serve GET /fpr_data (cursor pages, x-api-key) over records made by the "
        "same generator as `finmatch seed`, kept in FPR_API_DB (default .finmatch/fpr_api.duckdb).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8100, help="port (default 8100)")
    p.add_argument("--db", metavar="PATH", help="records file (default FPR_API_DB)")
    p.add_argument(
        "--records",
        type=int,
        default=generator.DEFAULT_ROWS,
        help=f"records to generate when the file is new (default {generator.DEFAULT_ROWS})",
    )
    p.add_argument("--seed", type=int, default=generator.DEFAULT_SEED, help="generator seed")
    p.add_argument("--reset", action="store_true", help="generate the records again")
    p.set_defaults(func=cmd_source_api)

    p = sub.add_parser(
        "source-change",
        help="update and add records at the running source API",
        description="Give records at the source API a newer last_updated_epoch, so the next "
        "sync has changes to fetch.",
    )
    p.add_argument("--update", type=int, default=0, metavar="N", help="existing records to update")
    p.add_argument("--add", type=int, default=0, metavar="N", help="new records to add")
    p.add_argument("--seed", type=int, help="make the choice and the drift repeatable")
    p.add_argument("--url", help="the API's base URL (default FPR_API_URL)")
    p.set_defaults(func=cmd_source_change)

    p = sub.add_parser(
        "sync",
        parents=[common],
        help="pull the source API into the warehouse with the Fivetran connector",
        description="Run connector/connector.py with the Fivetran SDK's tester (fivetran "
        "debug) against the source API, then apply the records it fetched to fpr_records. "
        "Incremental: only records updated since the last sync are fetched.",
    )
    p.add_argument("--url", help="the API's base URL (default FPR_API_URL)")
    p.add_argument(
        "--page-size", type=_whole(1, 200), default=100, help="records per page, 1-200 (100)"
    )
    p.add_argument(
        "--max-retries", type=_whole(0, 100), default=6, help="retries of a failing request (6)"
    )
    p.add_argument(
        "--backoff", type=_number("seconds", 0, 600), default=1.0, help="first retry wait (1 s)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="request timeout, seconds (30)")
    p.add_argument(
        "--full",
        action="store_true",
        help="fetch every record again and make fpr_records exactly the source's",
    )
    p.add_argument(
        "--replace", action="store_true", help="replace a seeded or loaded fpr_records table"
    )
    p.add_argument("--quiet", action="store_true", help="do not show the connector's log")
    p.set_defaults(func=cmd_sync)
    return parser


def _setting_problem(e: ValidationError) -> str:
    """Say which setting is wrong, the value given and what it must be."""
    told = []
    for err in e.errors():
        where = err.get("loc") or ()
        name = str(where[0]).upper() if e.title.endswith("Settings") and where else e.title
        value = clip(hide_password(str(err.get("input"))), 80)
        told.append(f"{name}={value!r} is not valid: {err.get('msg')}")
    return "; ".join(told) + "; set it in the environment or in .env"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    from pydantic import ValidationError

    from tools.ingest import WarehouseBusy
    from tools.warehouse import WarehouseError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        _err(f"error: {e}")
        return e.code
    except ValidationError as e:  # a setting from the environment or .env out of range
        _err(f"error: {_setting_problem(e)}")
        return EXIT_USAGE
    except (WarehouseError, WarehouseBusy) as e:
        _err(f"error: {e}")
        return EXIT_ERROR
    except Exception as e:
        runs = sys.modules.get("service.runs")  # loaded by the commands that keep runs
        if runs is None or not isinstance(e, runs.CheckpointsError):
            raise
        _err(f"error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted; nothing was changed")
        return 130
    finally:
        pooled = sys.modules.get("graphs.resources")
        if pooled is not None:  # the warehouses the run opened close before the process ends
            pooled.close_all()


if __name__ == "__main__":
    sys.exit(main())
