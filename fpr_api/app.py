"""The synthetic FPR source API: `GET /fpr_data`, paged by cursor, behind an `x-api-key`.

It serves the records of a `SourceStore` exactly as the connector document specifies:
`cursor` and `page_size` (1-200, default 100) in, `records`, `next_cursor` and `has_more`
out. Beside it:

- `GET /fpr_api_spec`: this API's OpenAPI document.
- `POST /admin/changes`: update and add records (with a newer `last_updated_epoch`), so
  an incremental sync has something to fetch.
- `POST /admin/faults`, `DELETE /admin/faults`: make the next `/fpr_data` requests fail
  the way real APIs do (429 with `Retry-After`, 5xx, a slow answer, a page that is not
  JSON, records that break the contract), to rehearse a connector's error handling.
- `GET /admin/stats`: requests and records served, faults still queued.

Every route but `/health` and the spec needs the key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException

from fpr_api.store import CursorError, SourceStore
from tools.schema import COLUMNS

MAX_PAGE = 200
DEFAULT_PAGE = 100

_PY_TYPES: dict[str, Any] = {"string": str, "date": str, "double": float, "bigint": int}
# The record as the contract documents it; used for the OpenAPI document.
FprRecord: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "FprRecord",
    **{
        c.name: (
            _PY_TYPES[c.type] | None if c.nullable else _PY_TYPES[c.type],
            Field(description=c.description + (" (YYYY-MM-DD)" if c.type == "date" else "")),
        )
        for c in COLUMNS
    },
)


class FprPage(BaseModel):
    """One page of `GET /fpr_data`."""

    records: list[FprRecord] = Field(description="The records, oldest update first")
    next_cursor: str | None = Field(
        description="Pass back as `cursor` for the next page; kept after the last page, it "
        "fetches only records updated since"
    )
    has_more: bool = Field(description="Whether another page follows now")


class Fault(BaseModel):
    """One misbehaviour of the next `/fpr_data` request."""

    kind: Literal["status", "delay", "malformed", "cut", "invalid_records"] = Field(
        description="status: answer `status` (with `Retry-After` when given); delay: wait "
        "`seconds` before answering normally; malformed: answer 200 with a body that is not "
        "JSON; cut: drop the connection halfway through the body; invalid_records: break "
        "the contract in `count` records of the page, from the `offset`-th on"
    )
    status: int = Field(503, ge=400, le=599, description="HTTP status of a `status` fault")
    retry_after: int | None = Field(None, ge=0, description="Retry-After seconds to send")
    seconds: float = Field(0.0, ge=0, le=600, description="How long a `delay` fault waits")
    count: int = Field(1, ge=1, le=MAX_PAGE, description="Records an invalid_records fault breaks")
    offset: int = Field(
        0, ge=0, lt=MAX_PAGE, description="Records an invalid_records fault leaves intact first"
    )


class FaultPlan(BaseModel):
    """Faults to apply, in order, to the `/fpr_data` requests after the next `after`."""

    faults: list[Fault] = Field(min_length=1, max_length=1000)
    after: int = Field(0, ge=0, le=100_000, description="Requests to answer normally first")


class ChangeRequest(BaseModel):
    """Records to change at the source."""

    update: int = Field(0, ge=0, description="Existing records to update", examples=[10])
    add: int = Field(0, ge=0, le=10_000_000, description="New records to add", examples=[5])
    seed: int | None = Field(None, ge=0, description="Makes the choice and the drift repeatable")


class Faults:
    """The queue of planned faults and what has been served, shared by the routes."""

    def __init__(self) -> None:
        """Start with nothing planned and nothing served."""
        self._lock = threading.Lock()
        self._plan: deque[Fault | None] = deque()
        self.requests = 0
        self.records = 0
        self.statuses: Counter[int] = Counter()

    def plan(self, plan: FaultPlan) -> None:
        """Queue `plan` behind what is already planned."""
        with self._lock:
            self._plan.extend([None] * plan.after)
            self._plan.extend(plan.faults)

    def clear(self) -> None:
        """Drop every planned fault."""
        with self._lock:
            self._plan.clear()

    def next(self) -> Fault | None:
        """Count a request and return the fault it gets, if any."""
        with self._lock:
            self.requests += 1
            return self._plan.popleft() if self._plan else None

    def served(self, status: int, records: int = 0) -> None:
        """Record an answer."""
        with self._lock:
            self.statuses[status] += 1
            self.records += records

    def stats(self) -> dict[str, Any]:
        """Return the counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "records_served": self.records,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "faults_pending": sum(1 for f in self._plan if f is not None),
            }


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _cut(text: str) -> AsyncIterator[str]:
    """Send half of `text`, then drop the connection (the server aborts the response)."""
    yield text[: len(text) // 2]
    raise ConnectionAbortedError("injected fault: connection dropped mid-body")


def _break(records: list[dict[str, Any]], count: int, offset: int = 0) -> None:
    """Break the contract in `count` records from the `offset`-th, each in a different way."""
    ways = ("missing", "text_number", "bad_date", "empty_id", "out_of_range")
    for i, record in enumerate(records[offset : offset + count]):
        way = ways[i % len(ways)]
        if way == "missing":
            record.pop("customer_segment", None)
        elif way == "text_number":
            record["account_balance"] = "a lot"
        elif way == "bad_date":
            record["product_recommendation_date"] = "31/02/2024"
        elif way == "empty_id":
            record["record_id"] = ""
        else:
            record["customer_churn_probability"] = 1.5


def create_app(store: SourceStore, api_key: str) -> FastAPI:
    """Return the source API over `store`, answering only requests that send `api_key`."""
    if not api_key:
        raise ValueError("the source API needs a key (FPR_API_KEY)")
    faults = Faults()
    app = FastAPI(
        title="FPR source API",
        version="1.0",
        description="Financial Services Product Recommendation records, paged by cursor.",
        openapi_url="/fpr_api_spec",
    )
    app.state.store = store
    app.state.faults = faults

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if not x_api_key:
            raise HTTPException(401, "Missing x-api-key header: send the API key in it.")
        if not hmac.compare_digest(x_api_key.encode(), api_key.encode()):
            raise HTTPException(401, "The x-api-key header does not hold a valid key.")

    keyed = [Depends(require_key)]

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            value = err.get("input")
            if where == "page_size":
                problems.append(
                    f"page_size must be a whole number from 1 to {MAX_PAGE}; got {value!r}"
                )
            else:
                problems.append(f"{where or 'request'}: {err.get('msg')} (got {value!r})")
        return _problem(400, "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/fpr_data",
        dependencies=keyed,
        summary="A page of FPR records",
        responses={
            200: {"model": FprPage, "description": "A page of records"},
            400: {"description": "page_size outside 1-200 or a cursor this API did not issue"},
            401: {"description": "x-api-key missing or wrong"},
        },
    )
    async def fpr_data(
        cursor: Annotated[
            str | None, Query(description="next_cursor of the previous page; none to start")
        ] = None,
        page_size: Annotated[
            int, Query(ge=1, le=MAX_PAGE, description="records per page (1-200)")
        ] = DEFAULT_PAGE,
    ) -> Response:
        fault = faults.next()
        if fault and fault.kind == "status":
            faults.served(fault.status)
            headers = (
                {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            )
            return _problem(fault.status, f"injected fault: {fault.status}", headers)
        if fault and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        try:
            page = await run_in_threadpool(store.page, cursor, page_size)
        except CursorError as e:
            faults.served(400)
            return _problem(400, str(e))
        faults.served(200, len(page.records))
        if fault and fault.kind == "malformed":
            return Response('{"records": [{"record_id": "trunc', media_type="application/json")
        if fault and fault.kind == "cut":
            text = json.dumps({"records": page.records})
            return StreamingResponse(_cut(text), media_type="application/json")
        if fault and fault.kind == "invalid_records":
            _break(page.records, fault.count, fault.offset)
        body = {"records": page.records, "next_cursor": page.next_cursor, "has_more": page.has_more}
        return Response(json.dumps(body), media_type="application/json")

    @app.post("/admin/changes", dependencies=keyed, summary="Update and add records at the source")
    def changes(request: ChangeRequest) -> dict[str, Any]:
        try:
            done = store.change(update=request.update, add=request.add, seed=request.seed)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return {
            "updated": done.updated,
            "added": done.added,
            "last_updated_epoch": done.epoch,
            "records": done.total,
        }

    @app.post(
        "/admin/faults", dependencies=keyed, summary="Make the next /fpr_data requests misbehave"
    )
    def plan_faults(plan: FaultPlan) -> dict[str, Any]:
        faults.plan(plan)
        return faults.stats()

    @app.delete("/admin/faults", dependencies=keyed, summary="Drop every planned fault")
    def clear_faults() -> dict[str, Any]:
        faults.clear()
        return faults.stats()

    @app.get("/admin/stats", dependencies=keyed, summary="Requests and records served")
    def stats() -> dict[str, Any]:
        return {**faults.stats(), "records": store.count() or 0}

    return app
