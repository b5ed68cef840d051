"""Sync throughput: a 1 M-record source API into the embedded warehouse with `finmatch sync`.

Starts `finmatch source-api` over a generated source of `--rows` records, then measures:

1. the API alone: every page read by a plain HTTP client (the ceiling the connector sees);
2. a full sync at `--page-size` (the connector under the Fivetran SDK's tester, then the
   apply into `fpr_records`), in records per second;
3. a sync with nothing new;
4. an incremental sync after `--changed` (default 1%) of the records were updated.

Usage: python bench/sync.py [--rows 1000000] [--page-size 200] [--changed 0.01]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.sync import sync  # noqa: E402

KEY = "bench-key"


def start_api(tmp: Path, rows: int, port: int) -> subprocess.Popen[bytes]:
    """Start `finmatch source-api` over a new source of `rows` records; wait until it answers."""
    env = {**os.environ, "FINMATCH_HOME": str(tmp / "home"), "FPR_API_KEY": KEY}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "source-api", "--port", str(port)]
        + ["--records", str(rows)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the source API did not start")
        time.sleep(0.2)
    print(f"source API up with {rows:,} records in {time.perf_counter() - started:.1f} s")
    return proc


def read_api(url: str, page_size: int) -> tuple[int, int, float]:
    """Read every page with a plain HTTP client; return records, pages and seconds."""
    started = time.perf_counter()
    records = pages = 0
    cursor = None
    with httpx.Client(base_url=url, headers={"x-api-key": KEY}, timeout=60) as client:
        while True:
            params: dict[str, object] = {"page_size": page_size}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/fpr_data", params=params).json()
            records += len(page["records"])
            pages += 1
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return records, pages, time.perf_counter() - started


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--changed", type=float, default=0.01)
    args = parser.parse_args()
    port = 8100 + os.getpid() % 800
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="finmatch-bench-sync-") as name:
        tmp = Path(name)
        api = start_api(tmp, args.rows, port)
        try:
            records, pages, took = read_api(url, args.page_size)
            print(
                f"API alone: {records:,} records in {pages:,} pages in {took:.1f} s = "
                f"{records / took:,.0f} records/s ({took / pages * 1000:.1f} ms a page)"
            )
            configuration = {"base_url": url, "api_key": KEY, "page_size": str(args.page_size)}
            folder, warehouse = tmp / "workspace", tmp / "fpr.duckdb"
            peak = re.compile(r"memory usage: average ([\d.]+) MB, peak ([\d.]+) MB")
            memory: list[str] = []

            def on_line(line: str) -> None:
                if " connector " in line:
                    print("   ", line.split(" connector ", 1)[1])
                if found := peak.search(line):
                    memory.append(f"{found.group(2)} MB")

            def run(label: str) -> float:
                started = time.perf_counter()
                result = sync(warehouse, configuration, folder=folder, on_line=on_line)
                total = time.perf_counter() - started
                applied = result.applied
                print(
                    f"{label}: fetched {result.fetched:,} records in {result.pages:,} pages; "
                    f"connector {result.connector_s:.1f} s, apply {applied.elapsed_s:.2f} s "
                    f"({applied.inserted:,} new, {applied.updated:,} updated), total {total:.1f} s"
                    + (f" = {result.fetched / total:,.0f} records/s" if result.fetched else "")
                    + (f"; connector peak memory {memory[-1]}" if memory else "")
                )
                return total

            full = run(f"full sync, page size {args.page_size}")
            nothing = run("sync with nothing new")
            changed = max(1, int(args.rows * args.changed))
            httpx.post(
                f"{url}/admin/changes",
                json={"update": changed, "seed": 1},
                headers={"x-api-key": KEY},
                timeout=600,
            ).raise_for_status()
            incremental = run(f"incremental sync, {changed:,} records ({args.changed:.0%}) changed")
            print(
                f"incremental / full: {incremental / full:.3f} "
                f"(no-change sync {nothing:.1f} s: the tester's start-up)"
            )
        finally:
            api.terminate()
            api.wait(timeout=60)


if __name__ == "__main__":
    main()
