"""`finmatch sync` end to end: the real source API on 127.0.0.1, the connector run by the
Fivetran SDK's own tester (`fivetran debug`, in the connector environment), and the
embedded warehouse it applies to."""

from __future__ import annotations

import datetime
import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.fpr_api.server import KEY, SourceApi, all_records, start_api
from tools.customers import CUSTOMERS
from tools.ingest import seed_table
from tools.schema import COLUMNS, FIVETRAN_DELETED, FIVETRAN_SYNCED
from tools.sync import SyncError, SyncResult, read_state, runner_env, sync

pytestmark = [pytest.mark.connector, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _connector_env() -> None:
    fivetran = runner_env() / "bin" / "fivetran"
    assert fivetran.exists(), f"{fivetran} is missing: run `make connector-env` first"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[SourceApi]:
    source = start_api(tmp_path / "source.duckdb")
    yield source
    source.stop()


class Syncer:
    """Runs syncs of one workspace into one warehouse, keeping the connector's log."""

    def __init__(self, tmp: Path, api: SourceApi) -> None:
        self.api = api
        self.folder = tmp / "workspace"
        self.warehouse = tmp / "fpr.duckdb"
        self.log: list[str] = []

    def config(self, **overrides: str) -> dict[str, str]:
        return {
            "base_url": self.api.url,
            "api_key": KEY,
            "page_size": "100",
            "max_retries": "3",
            "backoff_seconds": "0.1",
            "timeout_seconds": "5",
            **overrides,
        }

    def __call__(self, *, full: bool = False, replace: bool = False, **overrides: str) -> Any:
        self.log = []
        return sync(
            self.warehouse,
            self.config(**overrides),
            full=full,
            replace=replace,
            folder=self.folder,
            on_line=self.log.append,
        )

    def served(self) -> int:
        return int(self.api.admin("GET", "/admin/stats")["records_served"])


@pytest.fixture
def syncer(tmp_path: Path, api: SourceApi) -> Syncer:
    return Syncer(tmp_path, api)


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    copy = path.with_name(f"read-{time.monotonic_ns()}.duckdb")
    shutil.copyfile(path, copy)
    con = duckdb.connect(str(copy), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
        copy.unlink()


def warehouse_records(path: Path) -> dict[str, dict[str, Any]]:
    cols = ", ".join(
        f"strftime({c.name}, '%Y-%m-%d')" if c.type == "date" else c.name for c in COLUMNS
    )
    names = [c.name for c in COLUMNS]
    rows = read(path, f"SELECT {cols} FROM fpr_records")
    records = [dict(zip(names, row, strict=True)) for row in rows]
    by_id = {r["record_id"]: r for r in records}
    assert len(by_id) == len(records), "duplicated record_id in the warehouse"
    return by_id


def assert_mirrors_source(syncer: Syncer) -> None:
    source = {r["record_id"]: r for r in all_records(syncer.api.store)}
    assert warehouse_records(syncer.warehouse) == source
    flags = read(
        syncer.warehouse,
        f"SELECT count(*) FILTER (WHERE {FIVETRAN_SYNCED} IS NULL), "
        f"count(*) FILTER (WHERE {FIVETRAN_DELETED}) FROM fpr_records",
    )
    assert flags == [(0, 0)]
    # The customer snapshot was rebuilt with the records.
    snapshot = read(
        syncer.warehouse,
        f"SELECT (SELECT count(*) FROM {CUSTOMERS}), "
        "(SELECT count(DISTINCT customer_id) FROM fpr_records), "
        "(SELECT records FROM fpr_customers_source), (SELECT count(*) FROM fpr_records)",
    )
    customers, distinct, fingerprint, rows = snapshot[0]
    assert customers == distinct and fingerprint == rows


def test_full_sync_lands_the_source_exactly_and_a_second_writes_nothing(
    syncer: Syncer,
) -> None:
    first: SyncResult = syncer()
    assert (first.fetched, first.pages, first.rejected) == (750, 8, 0)
    assert first.applied.replaced and first.applied.rows == 750
    assert_mirrors_source(syncer)
    assert any("750 records in 8 pages" in line for line in syncer.log)
    assert read_state(syncer.folder)["cursor"]
    before = syncer.warehouse.read_bytes()
    served = syncer.served()

    second = syncer()
    assert (second.fetched, second.pages, second.applied.written) == (0, 1, 0)
    assert syncer.served() == served  # the API was asked once and had nothing newer
    assert syncer.warehouse.read_bytes() == before  # the warehouse file was not written


def test_incremental_sync_lands_exactly_the_changes(syncer: Syncer) -> None:
    syncer()
    synced_before = dict(
        read(syncer.warehouse, f"SELECT record_id, {FIVETRAN_SYNCED} FROM fpr_records")
    )
    syncer.api.admin("POST", "/admin/changes", json={"update": 20, "add": 7, "seed": 11})
    served = syncer.served()

    result = syncer()
    assert (result.fetched, result.applied.inserted, result.applied.updated) == (27, 7, 20)
    assert syncer.served() - served == 27  # only the changed records were fetched
    assert_mirrors_source(syncer)
    synced_after = dict(
        read(syncer.warehouse, f"SELECT record_id, {FIVETRAN_SYNCED} FROM fpr_records")
    )
    touched = {rid for rid, at in synced_after.items() if synced_before.get(rid) != at}
    assert len(touched) == 27  # nothing else was rewritten

    again = syncer(full=True)  # --full fetches everything again
    assert again.fetched == 757 and again.applied.replaced and again.applied.rows == 757
    assert_mirrors_source(syncer)


def test_a_source_generated_anew_needs_a_full_sync_which_drops_what_is_gone(
    syncer: Syncer, tmp_path: Path
) -> None:
    syncer()
    old_api = syncer.api
    syncer.api = start_api(tmp_path / "regenerated.duckdb", records=700, seed=42)
    try:
        with pytest.raises(SyncError, match=r"refused the saved cursor.*finmatch sync --full"):
            syncer()
        assert len(warehouse_records(syncer.warehouse)) == 750  # kept as it was
        result = syncer(full=True)
        assert result.fetched == 700 and result.applied.replaced
        assert_mirrors_source(syncer)  # the 50 records the source no longer has are gone
    finally:
        syncer.api.stop()
        syncer.api = old_api


def test_a_failed_full_sync_keeps_the_table_until_the_next_sync_completes_it(
    syncer: Syncer,
) -> None:
    syncer()
    syncer.api.admin(
        "POST",
        "/admin/faults",
        json={"after": 2, "faults": [{"kind": "status", "status": 503}] * 3},
    )
    with pytest.raises(SyncError, match="full sync continues with the next `finmatch sync`"):
        syncer(full=True, max_retries="1")
    assert len(warehouse_records(syncer.warehouse)) == 750
    syncer.api.admin("DELETE", "/admin/faults")
    syncer.api.admin("POST", "/admin/changes", json={"update": 5})
    finished = syncer()
    # The rest of the records, plus the updated ones among the 200 already fetched.
    assert 550 <= finished.fetched <= 555 and finished.applied.replaced
    assert_mirrors_source(syncer)
    assert not (syncer.folder / "full-sync.pending").exists()


def test_a_sync_with_nothing_new_runs_while_the_warehouse_is_open_elsewhere(
    syncer: Syncer,
) -> None:
    syncer()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(120)",
            str(syncer.warehouse),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        result = syncer()  # like `finmatch serve` holding it: nothing new, nothing to write
        assert result.fetched == 0 and result.applied.written == 0
    finally:
        holder.kill()
        holder.wait()


def start_sync_command(
    syncer: Syncer, tmp_path: Path, *, start_new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start `finmatch sync` in a child process with its workspace under tmp_path/home."""
    env = {
        **os.environ,
        "FINMATCH_HOME": str(tmp_path / "home"),
        "FINMATCH_WAREHOUSE": f"duckdb:///{syncer.warehouse}",
        "FPR_API_KEY": KEY,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "sync", "--url", syncer.api.url]
        + ["--timeout", "300", "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=start_new_session,
    )


def test_a_killed_sync_resumes_from_its_checkpoint(syncer: Syncer, tmp_path: Path) -> None:
    # Three pages answer, then the API hangs: the sync is killed while it waits.
    syncer.api.admin(
        "POST", "/admin/faults", json={"after": 3, "faults": [{"kind": "delay", "seconds": 120}]}
    )
    proc = start_sync_command(syncer, tmp_path, start_new_session=True)
    folder = tmp_path / "home" / "connector"
    deadline = time.monotonic() + 120
    while read_state(folder).get("last_sync", {}).get("pages") != 3:
        assert proc.poll() is None, "the sync ended before it was killed"
        assert time.monotonic() < deadline, "the sync did not reach its third checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and the SDK's tester with it
    proc.wait(timeout=30)
    assert not syncer.warehouse.exists()  # killed before anything was applied
    syncer.api.admin("DELETE", "/admin/faults")
    served = syncer.served()

    syncer.folder = folder
    resumed = syncer()
    assert resumed.fetched == 450  # the five pages after the third checkpoint
    assert syncer.served() - served == 450
    assert_mirrors_source(syncer)


def test_a_terminated_sync_stops_its_tester_and_frees_the_workspace(
    syncer: Syncer, tmp_path: Path
) -> None:
    syncer.api.admin(
        "POST", "/admin/faults", json={"after": 1, "faults": [{"kind": "delay", "seconds": 120}]}
    )
    proc = start_sync_command(syncer, tmp_path)
    folder = tmp_path / "home" / "connector"
    deadline = time.monotonic() + 120
    while read_state(folder).get("last_sync", {}).get("pages") != 1:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.terminate()  # SIGTERM to the command alone, as a service manager sends it
    assert proc.wait(timeout=60) != 0
    with (folder / "sync.lock").open("w") as lock:  # the tester is gone: the lock is free
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    syncer.api.admin("DELETE", "/admin/faults")
    syncer.folder = folder
    assert syncer().fetched == 650
    assert_mirrors_source(syncer)


def test_retry_after_is_waited_out_up_to_its_cap(syncer: Syncer) -> None:
    faults = [
        {"kind": "status", "status": 429, "retry_after": 2},
        {"kind": "status", "status": 503, "retry_after": 600},
        {"kind": "status", "status": 500},
    ]
    syncer.api.admin("POST", "/admin/faults", json={"after": 1, "faults": faults})
    started = time.monotonic()
    result = syncer(max_retry_after_seconds="3", backoff_seconds="0.1")
    assert result.fetched == 750
    assert time.monotonic() - started < 60  # the 600 s Retry-After was capped at 3 s
    stamps = [
        datetime.datetime.strptime(line[:12], "%H:%M:%S.%f")
        for line in syncer.log
        if "retry " in line
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 2
    assert 1.9 <= gaps[0] < 2.9  # Retry-After: 2 after the 429
    assert 2.9 <= gaps[1] < 4.5  # Retry-After: 600 after the 503, capped at 3


def test_429_5xx_and_timeouts_are_retried_until_the_sync_succeeds(syncer: Syncer) -> None:
    faults = [
        {"kind": "status", "status": 429, "retry_after": 1},
        {"kind": "status", "status": 500},
        {"kind": "delay", "seconds": 3},
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 502},
        {"kind": "cut"},  # the next page's body breaks off halfway
    ]
    syncer.api.admin("POST", "/admin/faults", json={"after": 2, "faults": faults})
    started = time.monotonic()
    result = syncer(timeout_seconds="1", max_retries="5")  # all five hit one page
    assert result.fetched == 750
    assert time.monotonic() - started >= 1.0  # the Retry-After was waited out
    assert_mirrors_source(syncer)
    retries = [line for line in syncer.log if "retry " in line]
    assert len(retries) == 5
    for seen in ("answer 429", "answer 500", "Read timed out", "answer 503", "answer 502"):
        assert any(seen in line for line in retries), seen
    assert sum("lost the body mid-read" in line for line in syncer.log) == 1
    stats = syncer.api.admin("GET", "/admin/stats")
    assert stats["faults_pending"] == 0
    assert {k: stats["statuses"][k] for k in ("429", "500", "502", "503")} == dict.fromkeys(
        ("429", "500", "502", "503"), 1
    )


def test_a_spent_retry_budget_fails_clearly_and_keeps_what_was_checkpointed(
    syncer: Syncer,
) -> None:
    five_503 = [{"kind": "status", "status": 503}] * 5
    syncer.api.admin("POST", "/admin/faults", json={"after": 2, "faults": five_503})
    with pytest.raises(SyncError) as failed:
        syncer(max_retries="2")
    message = str(failed.value)
    assert "kept failing (too many 503 error responses); gave up after 2 retries" in message
    assert "the next sync resumes" in message.lower()
    assert "200 records of the pages checkpointed before the failure were applied" in message
    assert len(warehouse_records(syncer.warehouse)) == 200
    syncer.api.admin("DELETE", "/admin/faults")

    rest = syncer()
    assert rest.fetched == 550
    assert_mirrors_source(syncer)


def test_bad_keys_pages_and_settings_fail_with_clear_messages(syncer: Syncer) -> None:
    with pytest.raises(SyncError, match=r"refused the key \(401: The x-api-key header"):
        syncer(api_key="wrong")
    syncer.api.admin("POST", "/admin/faults", json={"faults": [{"kind": "malformed"}]})
    with pytest.raises(SyncError, match="did not return JSON .* Nothing of this page was loaded"):
        syncer()
    with pytest.raises(SyncError, match="'page_size' must be a number from 1 to 200; got '500'"):
        syncer(page_size="500")
    with pytest.raises(SyncError, match="'base_url' must be the API's http"):
        syncer(base_url="127.0.0.1:8100")
    with pytest.raises(SyncError, match=r"failed \(.*Connection refused.*gave up after 0 retries"):
        syncer(base_url="http://127.0.0.1:9", max_retries="0")
    assert not syncer.warehouse.exists()  # nothing was fetched, nothing was written


def test_records_that_break_the_contract_are_counted_and_kept_aside(syncer: Syncer) -> None:
    syncer.api.admin(
        "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "count": 5}]}
    )
    result = syncer()
    assert (result.fetched, result.rejected) == (745, 5)
    assert len(warehouse_records(syncer.warehouse)) == 745
    assert sum("rejected record" in line for line in syncer.log) == 5
    rejected = read(
        syncer.folder / "files" / "warehouse.db",
        "SELECT problems FROM tester.fpr_rejected_records ORDER BY problems",
    )
    problems = " | ".join(p for (p,) in rejected)
    for reason in (
        "customer_segment is missing",
        "account_balance is not a number: 'a lot'",
        "product_recommendation_date is not a YYYY-MM-DD date: '31/02/2024'",
        "record_id is empty",
        "customer_churn_probability is out of range (must be 0-1): 1.5",
    ):
        assert reason in problems
    assert read_state(syncer.folder)["rejected_total"] == 5


def test_records_rejected_for_breaking_the_contract_are_fetched_again(syncer: Syncer) -> None:
    # Page 3 arrives with its first four records broken (one without an id at all).
    syncer.api.admin(
        "POST",
        "/admin/faults",
        json={"after": 2, "faults": [{"kind": "invalid_records", "count": 4}]},
    )
    first = syncer()
    assert (first.fetched, first.rejected) == (746, 4)
    assert len(warehouse_records(syncer.warehouse)) == 746
    first_log = syncer.log
    # The source still serves them broken: they stay held back, nothing else is lost.
    syncer.api.admin(
        "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "count": 4}]}
    )
    second = syncer()
    assert len(warehouse_records(syncer.warehouse)) == 746
    # Now the source serves them correctly: the next sync lands them.
    served = syncer.served()
    third = syncer()
    assert_mirrors_source(syncer)
    assert syncer.served() - served == 4  # only the held-back records were asked for again
    assert (first.held_back, second.held_back, third.held_back) == (4, 4, 0)
    assert (second.fetched, second.rejected, third.fetched, third.rejected) == (0, 4, 4, 0)
    assert any("4 record(s) held back" in line for line in first_log)
    assert any("up to date" in line for line in syncer.log)
    assert read_state(syncer.folder)["held_back"] == []

    # A changed record whose new version arrives broken keeps its old version only until
    # the source serves the new one correctly.
    syncer.api.admin("POST", "/admin/changes", json={"update": 10, "seed": 3})
    syncer.api.admin(
        "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "count": 2}]}
    )
    fourth = syncer()
    assert (fourth.fetched, fourth.rejected, fourth.held_back) == (8, 2, 2)
    assert any("2 record(s) held back" in line for line in syncer.log)
    source = {r["record_id"]: r for r in all_records(syncer.api.store)}
    stale = [rid for rid, r in warehouse_records(syncer.warehouse).items() if source[rid] != r]
    assert len(stale) == 2
    fifth = syncer()
    assert (fifth.fetched, fifth.held_back) == (2, 0)
    assert_mirrors_source(syncer)


def test_a_record_still_broken_mid_page_costs_its_page_again_but_no_writes(
    syncer: Syncer,
) -> None:
    # Two records in the middle of page 3 arrive broken, sync after sync.
    broken = {"kind": "invalid_records", "count": 2, "offset": 50}
    syncer.api.admin("POST", "/admin/faults", json={"after": 2, "faults": [broken]})
    first = syncer()
    assert (first.fetched, first.rejected, first.held_back) == (748, 2, 2)
    before = syncer.warehouse.read_bytes()
    syncer.api.admin("POST", "/admin/faults", json={"faults": [broken]})
    served = syncer.served()

    second = syncer()
    assert (second.fetched, second.rejected, second.held_back) == (0, 2, 2)
    assert syncer.served() - served == 52  # page 3 again, as far as its last held-back record
    # The 50 records before them on the page are already in the table: none was landed
    # again, so the warehouse was not opened for writing.
    assert second.applied.written == 0
    assert syncer.warehouse.read_bytes() == before

    third = syncer()
    assert (third.fetched, third.rejected, third.held_back) == (2, 0, 0)
    assert third.applied.written == 2
    assert_mirrors_source(syncer)


def test_a_seeded_table_is_replaced_only_when_asked(syncer: Syncer) -> None:
    seed_table(syncer.warehouse, rows=100, seed=9)
    with pytest.raises(SyncError, match="filled by `finmatch seed` or `load`.*--replace"):
        syncer()
    assert len(warehouse_records(syncer.warehouse)) == 100  # untouched
    result = syncer(replace=True)
    assert result.applied.replaced and result.applied.rows == 750
    assert_mirrors_source(syncer)
    seed_table(syncer.warehouse, rows=100, seed=9)  # seeding again ends the sync's claim
    syncer.api.admin("POST", "/admin/changes", json={"add": 1})
    with pytest.raises(SyncError, match="--replace"):
        syncer()


def test_the_sync_command_reports_what_it_did(syncer: Syncer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FINMATCH_HOME": str(tmp_path / "home"),
        "FINMATCH_WAREHOUSE": f"duckdb:///{syncer.warehouse}",
        "FPR_API_KEY": KEY,
        "FPR_API_URL": syncer.api.url,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "sync", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = run("--page-size", "200")
    assert first.returncode == 0, first.stderr
    assert "fetched 750 records in 4 pages" in first.stdout
    assert "replaced with the synced records; 750 rows" in first.stdout
    assert "SYNC SUCCEEDED" in first.stderr  # the SDK tester's own log, shown as it runs
    second = run("--quiet")
    assert second.returncode == 0 and second.stderr == ""
    assert "up to date (750 rows); nothing written" in second.stdout
    env["FPR_API_KEY"] = "wrong"
    refused = run("--quiet")
    assert refused.returncode == 1
    assert "error: The connector failed: The source API refused the key" in refused.stderr


def test_the_sync_command_never_calls_a_table_with_held_back_records_up_to_date(
    syncer: Syncer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FINMATCH_HOME": str(tmp_path / "home"),
        "FINMATCH_WAREHOUSE": f"duckdb:///{syncer.warehouse}",
        "FPR_API_KEY": KEY,
        "FPR_API_URL": syncer.api.url,
    }

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "sync", "--quiet"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    syncer.api.admin(
        "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "count": 3}]}
    )
    first = run()
    assert "3 rejected" in first and "3 records held back" in first
    assert "up to date" not in first
    syncer.api.admin(
        "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "count": 3}]}
    )
    still = run()  # nothing new, and the held-back records arrive broken again
    assert "3 records held back" in still and "up to date" not in still
    healed = run()
    assert "3 new" in healed and "held back" not in healed
    assert "up to date" in run()


def test_the_connector_declares_the_warehouse_schema() -> None:
    python = runner_env() / "bin" / "python"
    script = "import json, connector; print(json.dumps(connector.schema({})))"
    out = subprocess.run(
        [str(python), "-c", script],
        cwd=ROOT / "connector",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    tables = {t["table"]: t for t in json.loads(out)}
    records = tables["fpr_records"]
    assert records["primary_key"] == ["record_id"]
    sdk_type = {"string": "STRING", "date": "NAIVE_DATE", "double": "DOUBLE", "bigint": "LONG"}
    assert records["columns"] == {c.name: sdk_type[c.type] for c in COLUMNS}
    assert tables["fpr_rejected_records"]["primary_key"] == ["rejection_id"]
