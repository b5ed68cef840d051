"""The run queue's limit under a burst of concurrent requests, over real HTTP.

The gated scripted model (standing in for a hosted LLM, which cannot run here) holds the
one worker at its model step, so every run posted meanwhile waits in the queue.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

GATED = "import:tests.graphs.scripted:gated"
pytestmark = pytest.mark.server


def test_a_burst_of_posts_gets_no_more_places_than_the_queue_has(
    tmp_path: Path, own_warehouse: Path
) -> None:
    warehouse = own_warehouse
    srv = Server(
        tmp_path,
        warehouse,
        FINMATCH_QUEUE_LIMIT="10",
        FINMATCH_MAX_CONCURRENT_RUNS="1",
        FINMATCH_TRACING="false",
    )
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            first = c.post("/runs", json={"focus_area": "financial-impact", "model": GATED})
            assert first.status_code == 202
            deadline = time.monotonic() + 90
            while not (tmp_path / "marker").exists():  # the one worker is held
                assert time.monotonic() < deadline
                time.sleep(0.05)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                answers = await asyncio.gather(
                    *(c.post("/runs", json={"focus_area": "financial-impact"}) for _ in range(40))
                )
            return [a.status_code for a in answers]

        codes = asyncio.run(burst())
        assert codes.count(202) == 10 and codes.count(429) == 30, codes
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            queued = c.get("/runs", params={"status": "queued", "limit": 100}).json()["items"]
            assert len(queued) == 10
            full = c.post("/runs", json={"focus_area": "financial-impact"})
            assert full.status_code == 429 and "the limit is 10" in full.json()["detail"]
    finally:
        srv.stop()


def test_runs_that_start_at_once_take_no_place_in_the_queue(
    tmp_path: Path, own_warehouse: Path
) -> None:
    """Was 429 for the second of two posts with three workers idle: a run a free worker
    takes at once was counted as waiting."""
    srv = Server(
        tmp_path,
        own_warehouse,
        FINMATCH_QUEUE_LIMIT="1",
        FINMATCH_MAX_CONCURRENT_RUNS="3",
        FINMATCH_TRACING="false",
    )
    srv.start()
    gated = {"focus_area": "financial-impact", "model": GATED}
    try:

        async def burst(n: int) -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                answers = await asyncio.gather(*(c.post("/runs", json=gated) for _ in range(n)))
            return [a.status_code for a in answers]

        assert asyncio.run(burst(3)) == [202, 202, 202]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            deadline = time.monotonic() + 90
            while len(c.get("/runs", params={"status": "running"}).json()["items"]) < 3:
                assert time.monotonic() < deadline  # the three workers are held
                time.sleep(0.05)
            assert c.post("/runs", json=gated).status_code == 202  # the one place
            full = c.post("/runs", json=gated)
            assert full.status_code == 429 and "1 runs are already waiting" in full.text
    finally:
        srv.stop()
