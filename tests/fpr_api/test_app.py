"""The source API over real HTTP: the paging contract, keys, errors, changes and faults."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from fpr_api.store import CursorError, SourceStore
from tests.conftest import free_port
from tests.fpr_api.server import SourceApi
from tools.schema import COLUMN_NAMES, COLUMNS

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def seeded_records(path: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    """The rows `finmatch seed` wrote, keyed by record_id, dates as YYYY-MM-DD text."""
    copy = tmp / "seeded-copy.duckdb"
    shutil.copyfile(path, copy)
    cols = ", ".join(
        f"strftime({c.name}, '%Y-%m-%d') AS {c.name}" if c.type == "date" else c.name
        for c in COLUMNS
    )
    con = duckdb.connect(str(copy), read_only=True)
    try:
        rel = con.execute(f"SELECT {cols} FROM fpr_records")
        names = [d[0] for d in rel.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in rel.fetchall()}
    finally:
        con.close()


def read_all(client: httpx.Client, cursor: str | None = None, size: int | None = None) -> Any:
    """Page from `cursor` to the end; return (records, pages, last cursor)."""
    records: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if size:
            params["page_size"] = size
        response = client.get("/fpr_data", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        records += page["records"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return records, pages, cursor


def test_pages_hold_every_record_once_as_finmatch_seed_made_them(
    source_api: SourceApi, seeded_path: Path, tmp_path: Path
) -> None:
    with source_api.client() as c:
        records, pages, _ = read_all(c)
    assert len(pages) == 8
    assert [p["has_more"] for p in pages] == [True] * 7 + [False]
    assert [len(p["records"]) for p in pages] == [100] * 7 + [50]
    assert len({r["record_id"] for r in records}) == 750
    assert all(list(r) == list(COLUMN_NAMES) for r in records)
    order = [(r["last_updated_epoch"], r["record_id"]) for r in records]
    assert order == sorted(order)
    # Backed by the same generator as `finmatch seed` (same rows, same seed).
    assert {r["record_id"]: r for r in records} == seeded_records(seeded_path, tmp_path)


def test_page_size_defaults_to_100_and_allows_up_to_200(source_api: SourceApi) -> None:
    with source_api.client() as c:
        assert len(c.get("/fpr_data").json()["records"]) == 100
        assert len(c.get("/fpr_data", params={"page_size": 200}).json()["records"]) == 200
        assert len(c.get("/fpr_data", params={"page_size": 1}).json()["records"]) == 1


@pytest.mark.parametrize("size", ["0", "201", "-5", "ten", "1.5"])
def test_page_size_outside_1_to_200_is_a_400_naming_the_value(
    source_api: SourceApi, size: str
) -> None:
    with source_api.client() as c:
        response = c.get("/fpr_data", params={"page_size": size})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "page_size" in detail and "1 to 200" in detail and repr(size) in detail


def test_the_key_is_required(source_api: SourceApi) -> None:
    for key, message in ((None, "Missing x-api-key"), ("wrong", "not hold a valid key")):
        with source_api.client(key) as c:
            for method, path in (
                ("GET", "/fpr_data"),
                ("GET", "/admin/stats"),
                ("POST", "/admin/changes"),
                ("POST", "/admin/faults"),
            ):
                response = c.request(method, path, json={})
                assert response.status_code == 401, (method, path)
                assert message in response.json()["detail"]
    with source_api.client(None) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/fpr_api_spec").status_code == 200


@pytest.mark.parametrize(
    "cursor",
    ["not-a-cursor", base64.urlsafe_b64encode(b'{"a": 1}').decode(), "W10"],
)
def test_a_cursor_the_api_did_not_issue_is_a_400(source_api: SourceApi, cursor: str) -> None:
    with source_api.client() as c:
        response = c.get("/fpr_data", params={"cursor": cursor})
    assert response.status_code == 400
    assert "not one this API issued" in response.json()["detail"]


def test_the_spec_documents_the_contract(source_api: SourceApi) -> None:
    with source_api.client(None) as c:
        spec = c.get("/fpr_api_spec").json()
    params = {p["name"]: p for p in spec["paths"]["/fpr_data"]["get"]["parameters"]}
    assert set(params) == {"cursor", "page_size", "x-api-key"}
    size = params["page_size"]["schema"]
    assert (size["minimum"], size["maximum"], size["default"]) == (1, 200, 100)
    record = spec["components"]["schemas"]["FprRecord"]["properties"]
    assert list(record) == list(COLUMN_NAMES)
    assert all(record[name].get("description") for name in COLUMN_NAMES)
    page = spec["components"]["schemas"]["FprPage"]["properties"]
    assert set(page) == {"records", "next_cursor", "has_more"}


def test_changes_come_after_a_kept_cursor_and_only_they(source_api: SourceApi) -> None:
    with source_api.client() as c:
        before, _, cursor = read_all(c)
        old = {r["record_id"]: r for r in before}
        done = source_api.admin("POST", "/admin/changes", json={"update": 10, "add": 5, "seed": 3})
        assert (done["updated"], done["added"], done["records"]) == (10, 5, 755)
        changed, _, cursor2 = read_all(c, cursor)
        assert len(changed) == 15
        assert {r["last_updated_epoch"] for r in changed} == {done["last_updated_epoch"]}
        assert done["last_updated_epoch"] > max(r["last_updated_epoch"] for r in before)
        updated = [r for r in changed if r["record_id"] in old]
        added = [r for r in changed if r["record_id"] not in old]
        assert len(updated) == 10 and len(added) == 5
        # Updated records keep who they are and move on; added ones are new customers.
        for r in updated:
            was = old[r["record_id"]]
            assert r["customer_id"] == was["customer_id"] and r["product_id"] == was["product_id"]
            assert r != was
            if r["product_recommendation_status"] == "Accepted":
                assert r["product_sales_amount"] > 0 and r["product_sales_date"]
        old_customers = {r["customer_id"] for r in before}
        assert not {r["customer_id"] for r in added} & old_customers
        # Nothing else moved: a cursor kept after the change sees nothing new.
        again, _, _ = read_all(c, cursor2)
        assert again == []
        # The same seed picks the same records.
        source_api.admin("POST", "/admin/changes", json={"update": 10, "seed": 3})
        repeat, _, _ = read_all(c, cursor2)
        assert {r["record_id"] for r in repeat} == {r["record_id"] for r in updated}


def test_bad_changes_are_refused_with_the_reason(source_api: SourceApi) -> None:
    with source_api.client() as c:
        too_many = c.post("/admin/changes", json={"update": 751})
        negative = c.post("/admin/changes", json={"add": -1})
    assert too_many.status_code == 400
    assert "cannot update 751 records: the source holds 750" in too_many.json()["detail"]
    assert negative.status_code == 400 and "add" in negative.json()["detail"]


def test_planned_faults_hit_the_next_requests_in_order(source_api: SourceApi) -> None:
    plan = {
        "after": 1,
        "faults": [
            {"kind": "status", "status": 429, "retry_after": 2},
            {"kind": "status", "status": 500},
            {"kind": "malformed"},
            {"kind": "invalid_records", "count": 5},
        ],
    }
    assert source_api.admin("POST", "/admin/faults", json=plan)["faults_pending"] == 4
    with source_api.client() as c:
        assert c.get("/fpr_data").status_code == 200
        limited = c.get("/fpr_data")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
        assert c.get("/fpr_data").status_code == 500
        malformed = c.get("/fpr_data")
        assert malformed.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            malformed.json()
        broken = c.get("/fpr_data").json()["records"]
        assert "customer_segment" not in broken[0]
        assert broken[1]["account_balance"] == "a lot"
        assert broken[2]["product_recommendation_date"] == "31/02/2024"
        assert broken[3]["record_id"] == ""
        assert broken[4]["customer_churn_probability"] == 1.5
        assert all(set(r) == set(COLUMN_NAMES) for r in broken[5:])
        assert c.get("/fpr_data").status_code == 200
        source_api.admin(
            "POST", "/admin/faults", json={"faults": [{"kind": "invalid_records", "offset": 7}]}
        )
        shifted = c.get("/fpr_data").json()["records"]
        assert "customer_segment" not in shifted[7]
        assert all(set(r) == set(COLUMN_NAMES) for r in shifted[:7] + shifted[8:])
    stats = source_api.admin("GET", "/admin/stats")
    assert stats["statuses"] == {"200": 5, "429": 1, "500": 1}
    assert stats["faults_pending"] == 0 and stats["requests"] == 7
    source_api.admin("POST", "/admin/faults", json={"faults": [{"kind": "status"}]})
    assert source_api.admin("DELETE", "/admin/faults")["faults_pending"] == 0


def test_small_pages_walk_ties_in_the_epoch_in_key_order(source_api: SourceApi) -> None:
    with source_api.client() as c:
        _, _, cursor = read_all(c)
        source_api.admin("POST", "/admin/changes", json={"update": 9, "add": 6, "seed": 4})
        changed, pages, _ = read_all(c, cursor, size=2)  # 15 records, all one epoch
        everything, _, _ = read_all(c, size=37)
    assert len(pages) == 8 and len(changed) == 15
    assert len({r["last_updated_epoch"] for r in changed}) == 1
    assert [r["record_id"] for r in changed] == sorted(r["record_id"] for r in changed)
    # The same order the table gives, read without the API's paging.
    ordered = source_api.store._cursor().execute(
        "SELECT record_id FROM fpr_records ORDER BY last_updated_epoch, record_id"
    )
    expected = [row[0] for row in ordered.fetchall()]
    assert [r["record_id"] for r in everything] == expected
    assert [r["record_id"] for r in changed] == expected[-15:]


def test_a_cursor_from_records_generated_anew_is_refused(tmp_path: Path) -> None:
    first = SourceStore.open(tmp_path / "a.duckdb", records=50)
    cursor = first.page(None, 10).next_cursor
    first.close()
    again = SourceStore.open(tmp_path / "a.duckdb", records=50, reset=True)
    try:
        with pytest.raises(CursorError, match="generated anew: leave cursor out"):
            again.page(cursor, 10)
        assert len(again.page(None, 10).records) == 10
    finally:
        again.close()


def test_source_api_and_source_change_commands(tmp_path: Path) -> None:
    port = free_port()
    # An empty FPR_API_KEY outranks a developer's .env: the local key file is used.
    env = {**os.environ, "FINMATCH_HOME": str(tmp_path / "home"), "FPR_API_KEY": ""}
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "source-api", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--records", "120", "--seed", "5"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "it did not start"
            time.sleep(0.1)
        key_file = tmp_path / "home" / "fpr_api.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        with httpx.Client(base_url=url, headers={"x-api-key": key}) as c:
            records, _, _ = read_all(c, size=200)
        assert len(records) == 120
        changed = subprocess.run(
            [sys.executable, "-m", "service.cli", "source-change", "--update", "3", "--add", "2"]
            + ["--url", url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert changed.returncode == 0, changed.stderr
        assert "updated 3 and added 2 records" in changed.stdout
        assert "the source holds 122 records" in changed.stdout
        nothing = subprocess.run(
            [sys.executable, "-m", "service.cli", "source-change", "--url", url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nothing.returncode == 2 and "pass --update N and/or --add N" in nothing.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "serving 120 records" in err
