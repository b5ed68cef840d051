"""The dashboard end to end in headless Chromium: start a run, watch its steps, read the report.

`finmatch serve` and `finmatch app` (the Streamlit dashboard) run on 127.0.0.1 in child
processes;
Playwright's Python client drives Debian's Chromium (/usr/bin/chromium, no browser
download). The run uses the scripted `gated` model (a hosted LLM cannot run here): the
page shows the data steps finishing while the model step waits, then the report once the
test opens the gate. Screenshots of both moments are saved under the test's temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.app.conftest import GATED
from tests.conftest import ROOT, Server, free_port

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = Path(os.environ.get("FINMATCH_TEST_CHROMIUM", "/usr/bin/chromium"))
# Chromium as root in a container, with no calls to Google's services (refused here).
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dashboard(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "app.log"
    proc = subprocess.Popen(  # `finmatch app` with the endpoint already running
        [
            sys.executable,
            "-m",
            "service.cli",
            "app",
            "--service-url",
            server.url,
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not start in 60 s"
        time.sleep(0.2)
    yield url
    proc.terminate()  # stops the dashboard it started, too
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/_stcore/health", timeout=1)


@pytest.fixture
def page() -> Iterator[Page]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `apt-get install chromium` (make test does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_a_run_from_start_to_report_in_the_browser(
    page: Page, dashboard: str, server: Server, tmp_path: Path
) -> None:
    gate, marker = server.tmp / "gate", server.tmp / "marker"
    gate.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    page.goto(f"{dashboard}/ai_insights")
    expect(page.get_by_text("Business challenge")).to_be_visible()

    page.get_by_test_id("stSelectbox").filter(has_text="Model").click()
    page.get_by_role("option").filter(has_text=GATED).click()
    page.get_by_role("button").filter(has_text="Start").click()

    # The four data steps finish and show their numbers while the model step runs.
    steps = page.get_by_test_id("stMarkdownContainer").filter(has_text=" — ")
    expect(page.get_by_text("AI Banking Intelligence Processing — running")).to_be_visible()
    expect(page.get_by_text("3 of 5 steps · running")).to_be_visible()
    texts = steps.all_inner_texts()
    for name in ("Banking Customer Data Initialization", "Product Matching Performance Assessment",
                 "Banking Pattern Recognition"):  # fmt: skip
        assert any(f"{name} — " in t and any(c.isdigit() for c in t) for t in texts), texts
    assert not page.get_by_text("Finished in").is_visible()
    page.screenshot(path=tmp_path / "steps.png", full_page=True)

    gate.write_text("open")
    expect(page.get_by_text("Finished in 5 steps.")).to_be_visible()
    expect(page.get_by_text("Overall Performance — FinMatch analysis")).to_be_visible()
    expect(page.get_by_text("Evidence — the SQL behind each number")).to_be_visible()
    expect(page.get_by_text("5 of 5 steps · succeeded")).to_be_visible()
    expect(page.get_by_text(f"AI Banking Intelligence Processing — {GATED}:")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()  # the findings
    page.get_by_text("Overall Performance — FinMatch analysis").scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "report.png")
    assert (tmp_path / "steps.png").stat().st_size > 10_000
    assert (tmp_path / "report.png").stat().st_size > 10_000
