"""Concurrent runs and event-stream followers against a real `finmatch serve` on 127.0.0.1.

Seeds the 750-record table, starts the service (FINMATCH_MAX_CONCURRENT_RUNS = --workers)
and uses a model that answers after a fixed delay (`bench/delayed_model.py`, default 1 s)
in place of a hosted LLM. Two measurements:

- runs: for each N, N runs posted at once, each followed on its event stream to its end.
  Every run must end `succeeded` with all its steps and its report (none lost). Prints the
  wall time of the round, throughput, and p50/p99 run latency (post to `end` event).
  Target: 50 concurrent runs finish within 2x the time of one. Measured twice: with every
  run in the same scope (after the warm-up, the metrics come from the results the
  service's warehouse keeps, as for repeated analyses of one slice) and with every run in
  a scope of its own (a date window no other run of the bench uses, so each queries the
  table).
- events: ten runs followed by F clients (F/10 per run), three rounds; each event's
  latency is the time from its being recorded (its `at`) to its arrival at the client,
  over the events that happen while the client is connected. Target: p99 with 50
  followers <= 1.25x with 10.

With --tracing, the traces in the service's store are counted by state once it has
stopped (all must be OK).

    .venv/bin/python bench/service.py [--runs 1 10 50 200] [--followers 10 50] [--delay 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import free_port  # noqa: E402
from tools.ingest import seed_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "import:bench.delayed_model:delayed"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0-1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class Service:
    """`finmatch serve` in a child process with its own home and warehouse."""

    def __init__(self, home: Path, workers: int, delay: float, tracing: bool) -> None:
        """Configure; `with` starts it and waits until it is ready."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        self.env = {
            **os.environ,
            "FINMATCH_HOME": str(home),
            "FINMATCH_WAREHOUSE": f"duckdb:///{home / 'fpr.duckdb'}",
            "FINMATCH_MAX_CONCURRENT_RUNS": str(workers),
            "FINMATCH_TRACING": "true" if tracing else "false",
            "FINMATCH_BENCH_DELAY_S": str(delay),
            "FINMATCH_IMPORT_MODELS": MODEL,
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        """Start the service; return once /ready answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("the service did not become ready in 60 s")

    def cpu_s(self) -> float:
        """CPU seconds the service has used so far (user + system)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        """Stop the service."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


RECONNECTS = [0]  # streams that dropped and were resumed with Last-Event-ID


async def events(
    client: httpx.AsyncClient, run_id: str, arrived: list[float] | None = None
) -> list[dict[str, Any]]:
    """Follow a run's event stream to its end; with `arrived`, record event latencies.

    A connection the server closed (a keep-alive connection timed out while this client's
    loop was busy, say) is reopened with `Last-Event-ID`, as an SSE client does, up to
    five times; each time is counted in RECONNECTS.
    """
    out: list[dict[str, Any]] = []
    last = ""
    for attempt in range(6):
        headers = {"Last-Event-ID": last} if last else {}
        try:
            async with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as r:
                r.raise_for_status()
                connected = time.time()
                kind = ""
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        last = line[4:]
                    elif line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        now = time.time()
                        if arrived is not None and data["at"] >= connected:
                            arrived.append(now - data["at"])
                        out.append({"event": kind, **data})
                        if kind == "end":
                            return out
        except httpx.TransportError:
            if attempt == 5:
                raise
        RECONNECTS[0] += 1  # the stream broke off before the run's end
    raise SystemExit(f"the event stream of run {run_id} broke off six times")


_SCOPES = itertools.count()
FIRST_DAY = datetime.date(2024, 1, 1)  # of the seeded table, which spans 18 months


def scope(kind: str) -> dict[str, str]:
    """The filters of a run: none (`same`), or a date window no other run had (`distinct`)."""
    if kind == "same":
        return {}
    k = next(_SCOPES)
    start = FIRST_DAY + datetime.timedelta(days=k % 360)
    end = datetime.date(2025, 6, 30) - datetime.timedelta(days=k // 360)
    return {"date_from": start.isoformat(), "date_to": end.isoformat()}


async def one_run(
    client: httpx.AsyncClient, focus: str, filters: dict[str, str]
) -> tuple[float, str]:
    """Post a run, follow it to its end; return its latency and id."""
    start = time.perf_counter()
    created = await client.post(
        "/runs", json={"focus_area": focus, "model": MODEL, "filters": filters}
    )
    created.raise_for_status()
    run_id = created.json()["id"]
    story = await events(client, run_id)
    latency = time.perf_counter() - start
    if story[-1]["event"] != "end" or story[-1]["status"] != "succeeded":
        raise SystemExit(f"run {run_id} ended {story[-1]}")
    return latency, run_id


async def check(client: httpx.AsyncClient, run_ids: list[str], steps: int) -> None:
    """Every run is recorded succeeded with all its steps and a report."""
    for run_id in run_ids:
        run = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] != "succeeded" or len(run["steps"]) != steps or not run["result"]:
            raise SystemExit(f"run {run_id} is incomplete: {run['status']}, {len(run['steps'])}")


async def runs_round(
    url: str, n: int, focus: str, steps: int, scopes: str = "same"
) -> dict[str, float]:
    """N runs at once, each followed to its end; their wall time and latencies."""
    limits = httpx.Limits(max_connections=n * 2 + 10, max_keepalive_connections=n * 2 + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        filters = [scope(scopes) for _ in range(n)]
        start = time.perf_counter()
        done = await asyncio.gather(*(one_run(client, focus, f) for f in filters))
        wall = time.perf_counter() - start
        await check(client, [run_id for _, run_id in done], steps)
    latencies = [latency for latency, _ in done]
    return {
        "n": n,
        "wall": wall,
        "per_s": n / wall,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
    }


async def events_round(
    url: str, followers: int, focus: str, rounds: int, runs: int = 10
) -> dict[str, float]:
    """Ten runs, `followers` clients on their streams, `rounds` times; event latencies."""
    limits = httpx.Limits(max_connections=followers + runs + 10)
    arrived: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for _ in range(rounds):
            ids = []
            for _ in range(runs):
                created = await client.post("/runs", json={"focus_area": focus, "model": MODEL})
                ids.append(created.json()["id"])
            followed = (events(client, ids[i % runs], arrived) for i in range(followers))
            await asyncio.gather(*followed)
    ms = [a * 1000 for a in arrived]
    return {
        "followers": followers,
        "events": len(ms),
        "p50": statistics.median(ms),
        "p99": pct(ms, 0.99),
    }


def main() -> None:
    """Seed, serve, measure, print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, nargs="+", default=[1, 10, 50, 200])
    p.add_argument("--followers", type=int, nargs="+", default=[10, 50])
    p.add_argument("--event-rounds", type=int, default=3, help="rounds of ten followed runs")
    p.add_argument("--delay", type=float, default=1.0, help="model answer delay, seconds")
    p.add_argument("--workers", type=int, default=200, help="FINMATCH_MAX_CONCURRENT_RUNS")
    p.add_argument("--focus", default="optimization-opportunities")
    p.add_argument("--tracing", action="store_true", help="record an MLflow trace per run")
    p.add_argument(
        "--scopes",
        nargs="+",
        choices=["same", "distinct"],
        default=["same", "distinct"],
        help="runs in one scope, or each in a scope of its own",
    )
    args = p.parse_args()
    from graphs.areas import FOCUS_AREAS

    steps = len(FOCUS_AREAS[args.focus].steps)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        seed_table(home / "fpr.duckdb")
        print(
            f"service: {args.workers} workers, model answers after {args.delay:g} s, "
            f"focus {args.focus} ({steps} steps), tracing {'on' if args.tracing else 'off'}, "
            f"{os.cpu_count()} cores"
        )
        with Service(home, args.workers, args.delay, args.tracing) as svc:
            asyncio.run(runs_round(svc.url, 2, args.focus, steps))  # warm the service up
            for kind in args.scopes:
                print(
                    f"{kind} scope{'s' if kind == 'distinct' else ''}:\n"
                    f"{'runs':>5} {'wall s':>8} {'runs/s':>8} {'p50 s':>7} {'p99 s':>7} "
                    f"{'service CPU ms/run':>19}"
                )
                rounds = []
                for n in args.runs:
                    cpu = svc.cpu_s()
                    r = asyncio.run(runs_round(svc.url, n, args.focus, steps, kind))
                    per_run = (svc.cpu_s() - cpu) / n * 1000
                    rounds.append(r)
                    print(
                        f"{n:>5} {r['wall']:>8.2f} {r['per_s']:>8.1f} {r['p50']:>7.2f} "
                        f"{r['p99']:>7.2f} {per_run:>19.0f}",
                        flush=True,
                    )
                if RECONNECTS[0]:
                    print(f"streams resumed with Last-Event-ID so far: {RECONNECTS[0]}")
                by_n = {r["n"]: r["wall"] for r in rounds}
                if 1 in by_n and 50 in by_n:
                    ratio = by_n[50] / by_n[1]
                    print(f"50 runs / 1 run: {ratio:.2f}x (target <= 2x)")
            print(f"{'followers':>9} {'events':>7} {'p50 ms':>7} {'p99 ms':>7}")
            ev = []
            for f in args.followers:
                r = asyncio.run(events_round(svc.url, f, args.focus, args.event_rounds))
                ev.append(r)
                print(f"{f:>9} {r['events']:>7} {r['p50']:>7.1f} {r['p99']:>7.1f}", flush=True)
            if len(ev) >= 2:
                print(f"p99 {ev[-1]['followers']} / {ev[0]['followers']} followers: "
                      f"{ev[-1]['p99'] / ev[0]['p99']:.2f}x (target <= 1.25x)")  # fmt: skip
        if args.tracing:  # the service has stopped and flushed: every trace must be whole
            print("traces by state:", trace_states(home / "mlflow.db"))


def trace_states(store: Path) -> dict[str, int]:
    """Count the traces in a SQLite MLflow store by state (all should be OK)."""
    import sqlite3

    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT status, count(*) FROM trace_info GROUP BY 1").fetchall())


if __name__ == "__main__":
    main()
