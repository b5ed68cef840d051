"""The dashboard's client of the agent endpoint: following a run across a lost connection.

The endpoint is `finmatch serve` in a child process, stopped (or killed and started again
on the same port) mid-run; the run waits at its model step on the scripted `gated` model
(a hosted LLM cannot run here).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from app.client import Follower, Service, ServiceDown
from tests.app.conftest import GATED
from tests.conftest import Server, free_port

pytestmark = pytest.mark.server


def wait(check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def follow_to_model_step(server: Server) -> Follower:
    """Start a run on the gated model and follow it until it waits at its model step."""
    service = Service(server.url)
    run = service.start_run("optimization-opportunities", GATED, {})
    follower = Follower(service, run["id"], retry_s=0.2).start()
    wait(lambda: (server.tmp / "marker").exists())
    wait(lambda: len([e for e in follower.snapshot()[0] if e["type"] == "step_finish"]) == 4)
    return follower


def check_whole_story(follower: Follower) -> None:
    """Every event once, in order, ending with the interrupted run's `end`."""
    events, connection, done = follower.snapshot()
    assert connection == "" and done
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "end" and events[-1]["status"] == "failed"
    assert "resume" in events[-1]["error"]


def test_a_stopping_endpoint_ends_open_streams_with_the_runs_end(
    tmp_path: Path, seeded_path: Path
) -> None:
    server = Server(tmp_path, seeded_path, FINMATCH_TRACING="false")
    server.start()
    follower = follow_to_model_step(server)
    started = time.monotonic()
    server.stop()  # SIGTERM: the open stream must not hold the endpoint up
    assert time.monotonic() - started < 15
    wait(lambda: follower.snapshot()[2], timeout=10)
    check_whole_story(follower)


def test_a_follower_reconnects_after_a_crash_and_misses_nothing(
    tmp_path: Path, seeded_path: Path
) -> None:
    server = Server(tmp_path, seeded_path, FINMATCH_TRACING="false")
    server.start()
    try:
        follower = follow_to_model_step(server)
        server.stop(signal.SIGKILL)  # no goodbye: the stream just drops
        wait(lambda: "reconnecting" in follower.snapshot()[1])
        assert not follower.snapshot()[2]
        server.start()  # marks the interrupted run failed; the follower gets its end
        wait(lambda: follower.snapshot()[2])
        check_whole_story(follower)
    finally:
        server.stop()


def test_a_follower_that_cannot_reach_the_endpoint_gives_up_and_says_why() -> None:
    service = Service(f"http://127.0.0.1:{free_port()}")
    follower = Follower(service, "no-such-run", retry_s=0.01, attempts=3).start()
    wait(lambda: follower.snapshot()[2], timeout=10)
    assert follower.snapshot()[1].startswith("Stopped following the run: The agent endpoint")
    try:
        service.run("no-such-run")
    except ServiceDown as e:
        assert "cannot be reached" in str(e)
    else:
        raise AssertionError("a refused connection must raise ServiceDown")
