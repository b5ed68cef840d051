"""Fivetran Connector SDK connector: the FPR source API into the table `fpr_records`.

`update()` pages through `GET /fpr_data` with the API's cursor, upserts every record and
checkpoints after every page, so a sync that stops anywhere resumes after the last page it
finished. The cursor kept after the last page marks the newest `last_updated_epoch` seen:
the next sync asks only for records updated since.

Requests that fail the way busy APIs do (429, 5xx, timeouts, dropped connections) are
retried with exponential backoff, waiting as long as a `Retry-After` header asks (up to a
cap); once the retry budget is spent the sync stops with a message saying what failed.
A record that breaks the API contract (a field missing or empty, text where a number
belongs, a number that is not finite or outside its range, a date that is not
`YYYY-MM-DD`) is not loaded into `fpr_records`: it is logged, counted and kept, with the
reasons, in `fpr_rejected_records`. It is also held back: the state remembers its page
(the cursor before it and how far in it sat), and every sync asks for that page again
before anything else, landing only the held-back records that now arrive intact, until
none is left. `last_sync.held_back` in the state counts the records still held back.

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
MAX_PAGE_SIZE = 200  # the most records the API serves in a page
INT64 = (-(2**63), 2**63 - 1)
LOGGED_REJECTIONS = 20  # rejections logged one by one per sync; the rest are counted
# Pages with records held back that the state may remember; past this the source is
# serving corrupt data wholesale and the sync stops rather than grow the state unbounded.
MAX_HELD_BACK_PAGES = 200
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
        page_size=_number(configuration, "page_size", int, 1, MAX_PAGE_SIZE),
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


def fetch_page(
    session: requests.Session, settings: Settings, cursor: str | None, size: int | None = None
) -> dict[str, Any]:
    """Return one page (`size` records, else the configured page size) after `cursor`.

    Raise RuntimeError saying what went wrong.
    """
    url = f"{settings.base_url}/fpr_data"
    params: dict[str, Any] = {"page_size": size or settings.page_size}
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


# Where a record sits in the API's order: (last_updated_epoch, record_id).
Position = tuple[int, str]
# Between two landed records (None: the start or the end of the range), one or more
# records were rejected.
Gap = tuple[Position | None, Position | None]


def _position(value: Any) -> Position | None:
    """Return a position kept in the state as [epoch, id]; None for anything else."""
    if isinstance(value, list) and len(value) == 2:
        epoch, record_id = value
        if isinstance(epoch, int) and isinstance(record_id, str):
            return (epoch, record_id)
    return None


@dataclass(frozen=True)
class HeldBack:
    """Records of one page that broke the contract and have not been landed yet.

    The API has no way to ask for one record, and a rejected record's id or epoch may be
    the very field that is broken. So the page is remembered by the cursor the API gave
    before it (`after`; None: the first page), how far into it the last rejected record
    was (`size`) and the landed records between which the rejected ones sat (`gaps`).
    Records only ever move to the end of the API's order (a change gives them a newer
    epoch), so asking for `size` records after `after` again reaches every record still
    held back there, and a valid record outside the gaps is one already landed.
    """

    after: str | None
    size: int
    gaps: tuple[Gap, ...]
    records: int

    def holds(self, position: Position) -> bool:
        """Whether a record at `position` was among those held back."""
        return any(
            (low is None or low < position) and (high is None or position < high)
            for low, high in self.gaps
        )

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> dict[str | None, HeldBack]:
        """Return the pages held back in `state`, by the cursor before them."""
        held: dict[str | None, HeldBack] = {}
        entries = state.get("held_back")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            after, size, records = (entry.get(k) for k in ("after", "size", "records"))
            if not (after is None or isinstance(after, str)) or not isinstance(size, int):
                continue
            gaps = tuple(
                (_position(gap[0]), _position(gap[1]))
                for gap in entry.get("gaps") or []
                if isinstance(gap, list) and len(gap) == 2
            )
            # Without gaps every record of the range counts as held back: landing one
            # twice costs a write, skipping one would lose it.
            held[after] = cls(
                after,
                min(max(1, size), MAX_PAGE_SIZE),
                gaps or ((None, None),),
                records if isinstance(records, int) else 0,
            )
        return held

    def to_state(self) -> dict[str, Any]:
        """Return the entry as the state keeps it (JSON)."""
        return {
            "after": self.after,
            "size": self.size,
            "gaps": [[None if p is None else list(p) for p in gap] for gap in self.gaps],
            "records": self.records,
        }


class _Sync:
    """One run of `update()`: what it landed, rejected and still holds back."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Start from the state the last sync checkpointed."""
        self.cursor: str | None = state.get("cursor")
        self.held = HeldBack.from_state(state)
        self.rejected_total = int(state.get("rejected_total", 0))
        self.pages = self.records = self.rejected = 0

    @property
    def held_back(self) -> int:
        """Records rejected and not landed since."""
        return sum(h.records for h in self.held.values())

    def land(self, after: str | None, page: dict[str, Any], held: HeldBack | None = None) -> None:
        """Upsert the page's valid records; hold back the page if any broke the contract.

        Asked again for a `held` page, upsert only the records it held back: the others
        are landed already.
        """
        bad = reach = 0
        gaps: list[Gap] = []
        landed: Position | None = None  # the last valid record before the current one
        gap_from: Position | None = None
        in_gap = False
        for i, record in enumerate(page["records"]):
            problems = check_record(record)
            if problems:
                self.rejected += 1
                bad, reach = bad + 1, i + 1
                _reject(record, problems, self.rejected)
                if not in_gap:
                    gap_from, in_gap = landed, True
                continue
            position = (record["last_updated_epoch"], record["record_id"])
            if in_gap:
                gaps.append((gap_from, position))
                in_gap = False
            landed = position
            if held is None or held.holds(position):
                op.upsert(table=TABLE, data={name: record[name] for name in COLUMNS})
                self.records += 1
        if in_gap:
            gaps.append((gap_from, None))
        self.pages += 1
        if bad:
            self.held[after] = HeldBack(after, reach, tuple(gaps), bad)
        else:
            self.held.pop(after, None)

    def checkpoint(self) -> None:
        """Checkpoint the cursor with what is still held back."""
        op.checkpoint(
            state={
                "cursor": self.cursor,
                "held_back": [h.to_state() for h in self.held.values()],
                "rejected_total": self.rejected_total + self.rejected,
                "last_sync": {
                    "pages": self.pages,
                    "records": self.records,
                    "rejected": self.rejected,
                    "held_back": self.held_back,
                },
            }
        )


def update(configuration: dict[str, Any], state: dict[str, Any]) -> None:
    """Fetch the records held back before and those updated since the cursor; upsert them.

    Every page is checkpointed. A record rejected for breaking the contract does not stop
    the cursor, but its page is held back in the state and asked for again by every sync,
    first thing, until the record arrives intact.
    """
    settings = read_configuration(configuration)
    run = _Sync(state)
    session = open_session(settings)
    started = last_report = time.monotonic()
    if run.held:
        asked = run.held_back
        log.info(
            f"asking again for {asked:,} record(s) held back on {len(run.held):,} page(s) "
            "for breaking the API contract"
        )
        for held in list(run.held.values()):
            run.land(held.after, fetch_page(session, settings, held.after, held.size), held)
            run.checkpoint()
        log.info(f"{run.held_back:,} of the {asked:,} record(s) still held back")
    log.info(
        f"syncing from {settings.base_url}, "
        + (
            f"records updated after cursor {run.cursor}"
            if run.cursor
            else "all records (first sync)"
        )
    )
    while True:
        before = run.cursor
        page = fetch_page(session, settings, before)
        run.land(before, page)
        if len(run.held) > MAX_HELD_BACK_PAGES:
            raise RuntimeError(
                f"records on more than {MAX_HELD_BACK_PAGES} pages broke the API contract "
                f"({run.held_back:,} records; the reasons are in {REJECTED}): the source is "
                "serving corrupt data. Fix it at the source, then sync again: the pages "
                "checkpointed so far are kept, and the held-back ones are asked for again."
            )
        next_cursor = page.get("next_cursor") or before
        if page["has_more"] and next_cursor == before:
            raise RuntimeError(
                f"the API said more records follow cursor {before!r} but gave the same cursor "
                "back; stopping rather than fetching the same page forever"
            )
        run.cursor = next_cursor
        run.checkpoint()
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S or not page["has_more"]:
            rate = run.records / max(now - started, 1e-9)
            done = (
                f"; {run.held_back:,} record(s) held back"
                if run.held_back
                else ("" if page["has_more"] else "; up to date")
            )
            log.info(
                f"{run.records:,} records in {run.pages:,} pages ({rate:,.0f} records/s), "
                f"{run.rejected:,} rejected{done}"
            )
            last_report = now
        if not page["has_more"]:
            break
    if run.held_back:
        log.warning(
            f"{run.held_back:,} record(s) broke the API contract and are not in {TABLE}; they "
            f"are in {REJECTED} with the reasons, and the next sync asks for them again"
        )


connector = Connector(update=update, schema=schema)

if __name__ == "__main__":
    with open("configuration.json") as f:
        connector.debug(configuration=json.load(f))
