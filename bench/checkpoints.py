"""What a run leaves in the checkpointer: bytes stored per run, each focus area and all.

Runs each focus area and the portfolio once with the offline analyst on a generated
table (750 records by default) into a SQLite checkpointer of its own, and prints the
checkpoints and writes stored (bytes of their blobs) and the file's size. Target: a
four-area run at 750 rows stores at most 500 KB.

    .venv/bin/python bench/checkpoints.py [--rows 750]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graphs.areas import FOCUS_AREAS  # noqa: E402
from graphs.context import Context  # noqa: E402
from service.runs import run_focus  # noqa: E402
from tools.ingest import seed_table  # noqa: E402


def stored(path: Path) -> tuple[int, int, int, int]:
    """Checkpoints, their bytes, writes, their bytes."""
    with sqlite3.connect(path) as db:
        c = db.execute("SELECT count(*), coalesce(sum(length(checkpoint)), 0) FROM checkpoints")
        w = db.execute("SELECT count(*), coalesce(sum(length(value)), 0) FROM writes")
        return (*c.fetchone(), *w.fetchone())


def main() -> None:
    """Seed, run each focus, print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=750)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seed_table(folder / "fpr.duckdb", rows=args.rows)
        context = Context(warehouse=f"duckdb:///{folder / 'fpr.duckdb'}")
        print(f"{args.rows:,} records; one run each, offline analyst")
        print(f"{'focus':28} {'checkpoints':>11} {'KB':>7} {'writes':>7} {'KB':>7} "
              f"{'stored KB':>10} {'file KB':>8}")  # fmt: skip
        for focus in [*FOCUS_AREAS, "all"]:
            path = folder / f"{focus}.sqlite"
            result = asyncio.run(
                run_focus(focus, context, checkpoints=f"sqlite:///{path}", tracing=False)
            )
            assert result.status == "succeeded", result.error
            n_c, b_c, n_w, b_w = stored(path)
            print(
                f"{focus:28} {n_c:>11} {b_c / 1000:>7.0f} {n_w:>7} {b_w / 1000:>7.0f} "
                f"{(b_c + b_w) / 1000:>10.0f} {path.stat().st_size / 1000:>8.0f}"
            )


if __name__ == "__main__":
    main()
