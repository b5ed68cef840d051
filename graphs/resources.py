"""Process-wide pools of what runs share: open warehouses, keyed by URL.

A warehouse holds a connection; opening one per step would reopen the file or reconnect
to Databricks every time. Runs name the warehouse in their Context and get it from here.
"""

from __future__ import annotations

import threading

from tools.settings import WarehouseSettings, current
from tools.warehouse import Warehouse, open_warehouse

_lock = threading.Lock()
_open: dict[str, Warehouse] = {}


def warehouse_for(url: str) -> Warehouse:
    """Return the open warehouse for `url` ('' means the configured default)."""
    key = url or current(WarehouseSettings).finmatch_warehouse
    with _lock:
        if key not in _open:
            _open[key] = open_warehouse(key, current(WarehouseSettings))
        return _open[key]


def close_all() -> None:
    """Close every pooled warehouse (at process or service shutdown)."""
    with _lock:
        for wh in _open.values():
            wh.close()
        _open.clear()
