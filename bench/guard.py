"""The SQL guard's worst cases: time and memory of hostile statements, end to end.

Each statement goes through `tools.guard.run_sql` on the seeded 750-record table with
FINMATCH_DUCKDB_MEMORY_LIMIT (default 1GB here) and a timeout (default 10 s), as
`finmatch sql` runs it. Printed for each: the outcome, the wall time, the peak resident
memory of this process and of the child process the query ran in (sampled every 5 ms).
Targets: every statement ends within timeout + 2 s; the query's process stays under the
memory limit + 25%; this process does not grow.

    .venv/bin/python bench/guard.py [--memory-limit 1GB] [--timeout 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.guard import GuardRejection, run_sql  # noqa: E402
from tools.ingest import seed_table  # noqa: E402
from tools.settings import memory_bytes  # noqa: E402
from tools.warehouse import DuckDBWarehouse, WarehouseError  # noqa: E402

GROWTH = (
    "SELECT length(" + "replace(" * 7 + "string_agg(customer_name, 'a')"
    + ", 'a', 'aaaaaaaaaaaaaaaa')" * 7 + ") FROM fpr_records"
)  # fmt: skip
STATEMENTS = {
    "lpad to 2e9 characters": "SELECT length(lpad('a', 2000000000, 'x'))",
    "10,000-term OR chain (229 KB)": "SELECT count(*) FROM fpr_records WHERE "
    + " OR ".join(f"account_balance = {i}" for i in range(10_000)),
    "780-term OR chain (under the size cap)": "SELECT count(*) FROM fpr_records WHERE "
    + " OR ".join(f"account_balance = {i}" for i in range(780)),
    "45 nested parentheses": "SELECT " + "(" * 45 + "1" + ")" * 45,
    "string grown 16^7-fold by nested replace": GROWTH,
    "four-way cross join": "SELECT count(*) FROM fpr_records a, fpr_records b, "
    "fpr_records c, fpr_records d WHERE a.account_balance + b.account_balance > "
    "c.account_balance - d.account_balance",
    "string_agg over a three-way cross join": "SELECT length(string_agg(a.customer_name, ','))"
    " FROM fpr_records a, fpr_records b, fpr_records c",
}


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process, MB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class ChildPeak:
    """Samples the resident memory of the query processes (children of the fork server)."""

    def __init__(self) -> None:
        """Start sampling."""
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _server_pids(self) -> set[str]:
        found = set()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if b"tools.isolation" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.add(pid)
                except OSError:
                    pass
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            servers = self._server_pids()
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid in servers:
                    self.peak = max(self.peak, rss_mb(pid))

    def stop(self) -> float:
        """Stop sampling; return the peak, MB."""
        self._stop.set()
        self._thread.join()
        return self.peak


def main() -> None:
    """Seed, run each statement, print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    limit_mb = memory_bytes(args.memory_limit) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fpr.duckdb"
        seed_table(path)
        wh = DuckDBWarehouse(path, memory_limit=args.memory_limit, result_cache=0)
        run_sql(wh, "SELECT 1", timeout_s=30)  # start the fork server outside the figures
        print(
            f"memory limit {args.memory_limit} ({limit_mb:,.0f} MiB; +25% = "
            f"{1.25 * limit_mb:,.0f} MiB), timeout {args.timeout:g} s, {os.cpu_count()} cores"
        )
        print(f"{'statement':44} {'outcome':46} {'wall s':>7} {'child MiB':>10} {'self MiB':>9}")
        worst_wall, worst_child = 0.0, 0.0
        for name, sql in STATEMENTS.items():
            peak = ChildPeak()
            started = time.monotonic()
            try:
                ev = run_sql(wh, sql, timeout_s=args.timeout)
                outcome = f"answered, {ev.row_count} row(s)"
            except GuardRejection as e:
                outcome = "refused: " + e.reason
            except WarehouseError as e:
                outcome = f"stopped: {str(e)[:38]}"
            wall = time.monotonic() - started
            child = peak.stop()
            worst_wall, worst_child = max(worst_wall, wall), max(worst_child, child)
            self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{name:44} {outcome[:46]:46} {wall:>7.2f} {child:>10.0f} {self_mb:>9.0f}")
        wh.close()
        print(
            f"worst wall {worst_wall:.2f} s (target <= {args.timeout + 2:g} s); worst query "
            f"process {worst_child:,.0f} MiB (target <= {1.25 * limit_mb:,.0f} MiB)"
        )


if __name__ == "__main__":
    main()
