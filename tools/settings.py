"""Settings for data access, read from the environment (and a `.env` file).

The Databricks variables keep the names the FinMatch deployment already uses
(`DATABRICKS_HOST`, `DATABRICKS_SQL_HTTP_PATH`, `DATABRICKS_TOKEN`, `UC_CATALOG`,
`UC_SCHEMA`, `UC_TABLE`), so an existing environment works unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)
_READ: dict[tuple[type, tuple[tuple[str, str], ...], float], BaseSettings] = {}


def current(cls: type[S]) -> S:
    """Return `cls()`, read again only when the environment or `.env` has changed.

    Reading settings parses the environment and `.env` (milliseconds); code that runs
    per step or per run asks here instead of constructing them each time.
    """
    env_file = Path(".env")
    mtime = env_file.stat().st_mtime if env_file.exists() else 0.0
    key = (cls, tuple(sorted(os.environ.items())), mtime)
    found = _READ.get(key)
    if found is None:
        if len(_READ) > 32:
            _READ.clear()
        found = _READ[key] = cls()
    return found  # type: ignore[return-value]


def project_home() -> Path:
    """Return the folder holding local state: `FINMATCH_HOME`, else `.finmatch/` at the root.

    The root is the project checkout when running from one, else the working directory.
    """
    if home := os.environ.get("FINMATCH_HOME"):
        return Path(home)
    root = Path(__file__).resolve().parents[1]
    base = root if (root / "pyproject.toml").exists() else Path.cwd()
    return base / ".finmatch"


_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 2**10, "mib": 2**20, "gib": 2**30,
    "tib": 2**40,
}  # fmt: skip
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*|%)\s*")


def memory_bytes(text: str) -> int:
    """Return a DuckDB memory size ('1GB', '512 MiB', '75%' of this machine) in bytes.

    Units as DuckDB reads them: KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB of
    1024. Raises ValueError naming the value when it is not one.
    """
    match = _MEMORY.fullmatch(text or "")
    unit = match.group(2).lower() if match else ""
    if not match or (unit not in _UNITS and unit != "%") or (unit == "" and text.strip() != "0"):
        raise ValueError(
            f"{text!r} is not a memory size; write a number and a unit, e.g. 1GB, 512MB, "
            "2GiB, or a share of this machine's memory such as 50%"
        )
    number = float(match.group(1))
    if unit == "%":
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(total * number / 100)
    return int(number * _UNITS[unit])


def default_warehouse_url() -> str:
    """Return the URL of the embedded DuckDB warehouse."""
    return f"duckdb://{project_home() / 'fpr.duckdb'}"


MAX_ROW_CAP = 100_000  # rows one ad-hoc query may return
MAX_SQL_TIMEOUT_S = 86_400.0  # a day: a longer statement is a mistake, not an analysis
MAX_DAYS = 36_500.0  # retention of a century at most: further back no date is computed


class WarehouseSettings(BaseSettings):
    """Where `fpr_records` lives and how guarded queries are bounded."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", allow_inf_nan=False)

    finmatch_warehouse: str = Field(
        default_factory=default_warehouse_url,
        description="Warehouse URL: duckdb:///path/to/file.duckdb or databricks://",
    )
    databricks_host: str | None = Field(None, description="Workspace URL or host name")
    databricks_sql_http_path: str | None = Field(None, description="SQL warehouse HTTP path")
    databricks_token: SecretStr | None = Field(None, description="Personal access token")
    uc_catalog: str | None = Field(None, description="Unity Catalog catalog of fpr_records")
    uc_schema: str | None = Field(None, description="Unity Catalog schema of fpr_records")
    uc_table: str = Field("fpr_records", description="Unity Catalog table name")
    finmatch_sql_row_cap: int = Field(
        1000, ge=1, le=MAX_ROW_CAP, description="Rows per ad-hoc query"
    )
    finmatch_sql_timeout_s: float = Field(
        30.0, gt=0, le=MAX_SQL_TIMEOUT_S, description="Statement timeout, seconds"
    )
    finmatch_duckdb_memory_limit: str = Field(
        "1GB", description="Memory the embedded warehouse may use for caching and queries"
    )
    finmatch_result_cache: int = Field(
        256,
        ge=0,
        description="Metric results the embedded warehouse keeps for reuse while it is open "
        "(its file cannot change then); 0 keeps none",
    )

    @field_validator("finmatch_duckdb_memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if memory_bytes(value) < 64 * 2**20:
            raise ValueError(f"{value!r} is less than 64MB, too little for the warehouse")
        return value
