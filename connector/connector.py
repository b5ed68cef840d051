"""Fivetran Connector SDK connector: the FPR source API into the table `fpr_records`.

`update()` pages through `GET /fpr_data` with the API's cursor, upserts every record and
checkpoints after every page, so a sync that stops anywhere resumes after the last page it
finished. The cursor kept after the last page marks the newest `last_updated_epoch` seen:
the next sync asks only for records updated since.

Requests that fail the way busy APIs do (429, 5xx, timeouts, dropped connections) are
retried with exponential backoff, waiting as long as a `Retry-After` header asks (up to a
cap); once the retry budget is spent the sync stops with a message saying what failed.
A record that breaks the API contract is not loaded into `fpr_records`: it is logged,
counted and kept, with the reasons, in `fpr_rejected_records`.

Configuration (all values are strings, as Fivetran stores them):
`base_url`, `api_key` (required); `page_size` (1-200, default 100), `max_retries` (6),
`backoff_seconds` (1), `timeout_seconds` (30), `max_retry_after_seconds` (120).

Run it locally with the SDK's tester: `fivetran debug --configuration configuration.json`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import requests
from fivetran_connector_sdk import Connector
from fivetran_connector_sdk import Logging as log
from fivetran_connector_sdk import Operations as op
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

TABLE = "fpr_records"
REJECTED = "fpr_rejected_records"


@dataclass(frozen=True)
class Field:
    """One field of the API contract: its SDK type and, for a number, the range it must lie in.

    `low` and `high` are inclusive; None leaves that side open. Every field but a nullable
    one must have a value. These mirror `tools/schema.py` (this file ships alone, so it
    cannot import it); a test keeps the two agreeing.
    """

    type: str
    low: float | None = None
    high: float | None = None
    nullable: bool = False

    @property
    def range_text(self) -> str:
        """The allowed range in words ("0-1", "0 or more")."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g}"
        if self.low is not None:
            return f"{self.low:g} or more"
        return f"{self.high:g} or less"


FIELDS: dict[str, Field] = {
    "record_id": Field("STRING"),
    "customer_id": Field("STRING"),
    "customer_name": Field("STRING"),
    "customer_email": Field("STRING"),
    "customer_segment": Field("STRING"),
    "customer_lifecycle_stage": Field("STRING"),
    "customer_lifecycle_stage_transition_date": Field("NAIVE_DATE"),
    # No bound: an overdrawn account has a negative balance.
    "account_balance": Field("DOUBLE"),
    "transaction_history": Field("STRING"),
    "customer_transaction_value": Field("DOUBLE", low=0),
    "customer_transaction_count": Field("LONG", low=0),
    "product_id": Field("STRING"),
    "product_name": Field("STRING"),
    "product_type": Field("STRING"),
    "product_terms": Field("STRING"),
    "product_sales_amount": Field("DOUBLE", low=0),
    # Empty when no sale was made.
    "product_sales_date": Field("NAIVE_DATE", nullable=True),
    "product_recommendation": Field("STRING"),
    "product_recommendation_date": Field("NAIVE_DATE"),
    "product_recommendation_status": Field("STRING"),
    "recommendation_score": Field("DOUBLE", low=0, high=1),
    "customer_product_usage": Field("STRING"),
    "customer_product_usage_trend": Field("STRING"),
    "customer_product_interests": Field("STRING"),
    "customer_product_affinity": Field("DOUBLE", low=0, high=1),
    "customer_product_affinity_trend": Field("STRING"),
    "customer_satisfaction_score": Field("DOUBLE", low=0, high=1),
    "customer_churn_probability": Field("DOUBLE", low=0, high=1),
    "last_updated_epoch": Field("LONG", low=0),
}
# The columns of `fpr_records` as the SDK declares them.
COLUMNS: dict[str, str] = {name: field.type for name, field in FIELDS.items()}

REJECTED_COLUMNS: dict[str, str] = {
    "rejection_id": "STRING",
    "record_id": "STRING",
    "problems": "STRING",
    "record": "JSON",
    "last_updated_epoch": "LONG",
    "rejected_at": "UTC_DATETIME",
}

DEFAULTS = {
    "page_size": "100",
    "max_retries": "6",
    "backoff_seconds": "1",
    "timeout_seconds": "30",
    "max_retry_after_seconds": "120",
}
RETRY_STATUSES = (429, 500, 502, 503, 504)
INT64 = (-(2**63), 2**63 - 1)
LOGGED_REJECTIONS = 20  # rejections logged one by one per sync; the rest are counted
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class Settings:
    """The configuration, checked and converted."""

    base_url: str
    api_key: str
    page_size: int
    max_retries: int
    backoff_seconds: float
    timeout_seconds: float
    max_retry_after_seconds: float


def _number(configuration: dict[str, Any], key: str, cast: type, low: float, high: float) -> Any:
    text = str(configuration.get(key) or DEFAULTS[key]).strip()
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(
            f"configuration {key!r} must be a number from {low:g} to {high:g}; got {text!r}"
        )
    return value


def read_configuration(configuration: dict[str, Any]) -> Settings:
    """Return the checked settings; raise ValueError naming the first bad value."""
    base_url = str(configuration.get("base_url") or "").strip().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"configuration 'base_url' must be the API's http(s) URL, e.g. "
            f"http://127.0.0.1:8100; got {base_url!r}"
        )
    api_key = str(configuration.get("api_key") or "").strip()
    if not api_key or api_key.startswith("<"):
        raise ValueError("configuration 'api_key' is missing: set the FPR API key")
    return Settings(
        base_url=base_url,
        api_key=api_key,
        page_size=_number(configuration, "page_size", int, 1, 200),
        max_retries=_number(configuration, "max_retries", int, 0, 20),
        backoff_seconds=_number(configuration, "backoff_seconds", float, 0, 60),
        timeout_seconds=_number(configuration, "timeout_seconds", float, 0.1, 600),
        max_retry_after_seconds=_number(configuration, "max_retry_after_seconds", float, 0, 3600),
    )


def schema(configuration: dict[str, Any]) -> list[dict[str, Any]]:
    """Declare `fpr_records` (key `record_id`) and the table of rejected records."""
    return [
        {"table": TABLE, "primary_key": ["record_id"], "columns": COLUMNS},
        {"table": REJECTED, "primary_key": ["rejection_id"], "columns": REJECTED_COLUMNS},
    ]


class _Retry(Retry):
    """urllib3's retry policy, logging each retry and capping what Retry-After asks."""

    max_retry_after = 120.0

    def get_retry_after(self, response: Any) -> float | None:
        wait = super().get_retry_after(response)
        return None if wait is None else min(wait, self.max_retry_after)

    def increment(self, method: Any = None, url: Any = None, *args: Any, **kwargs: Any) -> Retry:
        # Raises when the budget is spent; fetch_page then says what failed.
        after = super().increment(method, url, *args, **kwargs)
        response, error = kwargs.get("response"), kwargs.get("error")
        what = f"answer {response.status}" if response is not None else repr(error)
        done = len(after.history)
        log.warning(f"GET {url} failed ({what}); retry {done} of {done + (after.total or 0)}")
        return after


def open_session(settings: Settings) -> requests.Session:
    """Return a session that sends the key and retries what is worth retrying."""
    policy = type("Retry", (_Retry,), {"max_retry_after": settings.max_retry_after_seconds})
    retry = policy(
        total=settings.max_retries,
        connect=settings.max_retries,
        read=settings.max_retries,
        status=settings.max_retries,
        other=0,
        backoff_factor=settings.backoff_seconds,
        backoff_max=60,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=True,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.headers.update({"x-api-key": settings.api_key, "Accept": "application/json"})
    return session


def _reason(error: Exception) -> str:
    """Return what underlies a requests error (urllib3 wraps it in its retry error)."""
    inner = error.args[0] if error.args else None
    return str(getattr(inner, "reason", None) or inner or error)


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail") or response.text[:300])
    except ValueError:
        return response.text[:300]


def _get(
    session: requests.Session, settings: Settings, url: str, params: dict[str, Any]
) -> requests.Response:
    """GET with the session's retries, also retrying a body cut off mid-read.

    urllib3 retries up to the response headers; a connection that drops while the body
    is read surfaces here instead, and is retried from the same budget.
    """
    for attempt in range(settings.max_retries + 1):
        try:
            return session.get(url, params=params, timeout=settings.timeout_seconds)
        except requests.exceptions.ChunkedEncodingError as e:
            if attempt == settings.max_retries:
                raise
            wait = min(60.0, settings.backoff_seconds * 2**attempt)
            log.warning(f"GET {url} lost the body mid-read ({e}); retrying in {wait:g} s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def fetch_page(session: requests.Session, settings: Settings, cursor: str | None) -> dict[str, Any]:
    """Return one page after `cursor`; raise RuntimeError saying what went wrong."""
    url = f"{settings.base_url}/fpr_data"
    params: dict[str, Any] = {"page_size": settings.page_size}
    if cursor:
        params["cursor"] = cursor
    where = f"the page after cursor {cursor!r}" if cursor else "the first page"
    try:
        response = _get(session, settings, url, params)
    except requests.exceptions.RetryError as e:
        raise RuntimeError(
            f"GET {url} for {where} kept failing ({_reason(e)}); gave up after "
            f"{settings.max_retries} retries: the source API is down or overloaded."
        ) from e
    except requests.RequestException as e:
        raise RuntimeError(
            f"GET {url} for {where} failed ({_reason(e)}); gave up after "
            f"{settings.max_retries} retries. Check that the API is running at base_url and "
            "answers within timeout_seconds."
        ) from e
    if response.status_code in (401, 403):
        raise RuntimeError(
            f"The source API refused the key ({response.status_code}: {_detail(response)}). "
            "Set configuration 'api_key' to the API's key (FPR_API_KEY for `finmatch sync`)."
        )
    if response.status_code == 400 and cursor:
        raise RuntimeError(
            f"GET {url} refused the saved cursor (400: {_detail(response)}). The source's "
            "records were replaced since the last sync: re-sync from the start "
            "(`finmatch sync --full`; in Fivetran, a historical re-sync)."
        )
    if response.status_code != 200:
        raise RuntimeError(
            f"GET {url} for {where} answered {response.status_code}: {_detail(response)}"
        )
    try:
        page = response.json()
    except ValueError as e:
        raise RuntimeError(
            f"GET {url} for {where} did not return JSON ({e}); first bytes: "
            f"{response.text[:120]!r}. Nothing of this page was loaded."
        ) from e
    if (
        not isinstance(page, dict)
        or not isinstance(page.get("records"), list)
        or not isinstance(page.get("has_more"), bool)
    ):
        keys = sorted(page) if isinstance(page, dict) else type(page).__name__
        raise RuntimeError(
            f"GET {url} for {where} returned a page without 'records' (a list) and "
            f"'has_more' (true/false); it had {keys}. Nothing of this page was loaded."
        )
    return page


def _problem(name: str, value: Any) -> str | None:
    """Return how `value` breaks the contract of field `name`; None when it keeps it."""
    field = FIELDS[name]
    if value is None:
        return None if field.nullable else f"{name} is empty"
    if field.type == "STRING":
        if not isinstance(value, str):
            return f"{name} is not text: {value!r}"
        if name == "record_id" and not value.strip():
            return "record_id is empty"
        return None
    if field.type == "NAIVE_DATE":
        try:
            if not isinstance(value, str) or len(value) != 10:
                raise ValueError(value)
            datetime.date.fromisoformat(value)
        except ValueError:
            return f"{name} is not a YYYY-MM-DD date: {value!r}"
        return None
    if field.type == "DOUBLE":
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or not isinstance(value, int | float):
            return f"{name} is not a number: {value!r:.60}"
        if not math.isfinite(number):
            return f"{name} is not a finite number (NaN or infinity): {value!r:.60}"
    elif field.type == "LONG":
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not INT64[0] <= value <= INT64[1]
        ):
            return f"{name} is not a whole number in the 64-bit range: {value!r:.60}"
    if (field.low is not None and value < field.low) or (
        field.high is not None and value > field.high
    ):
        return f"{name} is out of range (must be {field.range_text}): {value!r:.60}"
    return None


def check_record(record: Any) -> list[str]:
    """Return every way `record` breaks the API contract (empty when it is valid)."""
    if not isinstance(record, dict):
        return [f"the record is not an object: {record!r:.80}"]
    problems = [f"{name} is missing" for name in COLUMNS if name not in record]
    for name in COLUMNS:
        if name in record and (problem := _problem(name, record[name])):
            problems.append(problem)
    return problems


def _reject(record: Any, problems: list[str], count: int) -> None:
    raw = json.dumps(record, sort_keys=True, default=str)
    record_id = record.get("record_id") if isinstance(record, dict) else None
    record_id = record_id if isinstance(record_id, str) and record_id.strip() else None
    epoch = record.get("last_updated_epoch") if isinstance(record, dict) else None
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    if count <= LOGGED_REJECTIONS:
        log.warning(f"rejected record {record_id or '(no id)'}: {'; '.join(problems)}")
    op.upsert(
        table=REJECTED,
        data={
            # One row per distinct rejected version of a record.
            "rejection_id": hashlib.sha256(raw.encode()).hexdigest()[:32],
            "record_id": record_id,
            "problems": "; ".join(problems),
            "record": raw,
            "last_updated_epoch": epoch,
            "rejected_at": datetime.datetime.now(datetime.UTC).isoformat(),
        },
    )


def update(configuration: dict[str, Any], state: dict[str, Any]) -> None:
    """Fetch the records updated since the state's cursor and upsert them, page by page."""
    settings = read_configuration(configuration)
    cursor = state.get("cursor")
    rejected_total = int(state.get("rejected_total", 0))
    session = open_session(settings)
    pages = records = rejected = 0
    started = last_report = time.monotonic()
    log.info(
        f"syncing from {settings.base_url}, "
        + (f"records updated after cursor {cursor}" if cursor else "all records (first sync)")
    )
    while True:
        page = fetch_page(session, settings, cursor)
        for record in page["records"]:
            problems = check_record(record)
            if problems:
                rejected += 1
                _reject(record, problems, rejected)
            else:
                op.upsert(table=TABLE, data={name: record[name] for name in COLUMNS})
                records += 1
        pages += 1
        next_cursor = page.get("next_cursor") or cursor
        if page["has_more"] and next_cursor == cursor:
            raise RuntimeError(
                f"the API said more records follow cursor {cursor!r} but gave the same cursor "
                "back; stopping rather than fetching the same page forever"
            )
        cursor = next_cursor
        op.checkpoint(
            state={
                "cursor": cursor,
                "rejected_total": rejected_total + rejected,
                "last_sync": {"pages": pages, "records": records, "rejected": rejected},
            }
        )
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S or not page["has_more"]:
            rate = records / max(now - started, 1e-9)
            log.info(
                f"{records:,} records in {pages:,} pages ({rate:,.0f} records/s), "
                f"{rejected:,} rejected" + ("" if page["has_more"] else "; up to date")
            )
            last_report = now
        if not page["has_more"]:
            break
    if rejected:
        log.warning(
            f"{rejected:,} record(s) broke the API contract and were not loaded into {TABLE}; "
            f"they are in {REJECTED} with the reasons"
        )


connector = Connector(update=update, schema=schema)

if __name__ == "__main__":
    with open("configuration.json") as f:
        connector.debug(configuration=json.load(f))
