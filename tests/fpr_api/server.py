"""The real source API, served by uvicorn on 127.0.0.1 in a thread of the test process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from fpr_api.app import create_app
from fpr_api.store import SourceStore
from tests.conftest import free_port

KEY = "test-key"


@dataclass
class SourceApi:
    """A running source API, its store and a client that sends the key."""

    url: str
    store: SourceStore
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"x-api-key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.client() as c:
            response = c.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.store.close()


def all_records(store: SourceStore) -> list[dict[str, Any]]:
    """Every record the store holds, read through its own paging."""
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = store.page(cursor, 200)
        records += page.records
        cursor = page.next_cursor
        if not page.has_more:
            return records


def start_api(path: Path, records: int = 750, seed: int = 42) -> SourceApi:
    store = SourceStore.open(path, records=records, seed=seed)
    port = free_port()
    config = uvicorn.Config(
        create_app(store, KEY),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the source API did not start")
        time.sleep(0.02)
    return SourceApi(f"http://127.0.0.1:{port}", store, server, thread)
