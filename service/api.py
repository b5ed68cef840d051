"""The agent endpoint: FastAPI routes over the run manager, the metric catalog and the data.

`create_app()` builds the app; `finmatch serve` runs it with uvicorn. Every error is a JSON
problem body (`type`, `title`, `status`, `detail`), never a stack trace.

When API keys are set (`FINMATCH_API_KEYS`), every path but `/health` needs
`Authorization: Bearer <key>`: the routes, FastAPI's own `/docs`, `/redoc`, `/openapi.json`
and `/docs/oauth2-redirect`, and paths that do not exist. The check is `RequireKey`, a
pure ASGI middleware, the outermost layer of the app: it sees the request line and headers
before routing, so nothing has read the body yet. A FastAPI dependency cannot do that:
FastAPI parses a route's body before it solves any dependency, route- or router-level, so a
key dependency answers an unauthenticated, unparsable body with 400 or 422 instead of 401;
and it covers only the routes it is declared on, which FastAPI's documentation routes are
not. The middleware denies by default: a route added later needs the key without anyone
remembering to say so. The OpenAPI schema declares the same rule (a bearer security scheme
on every operation but `/health`, with its 401), and declares the problem answers each
route gives, as `application/problem+json`.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from mlflow.pyfunc import ResponsesAgent
from mlflow.types import responses
from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Match

from graphs.areas import FOCUS_AREAS
from graphs.models import UnknownModel, available_models, check_model
from graphs.resources import close_all, warehouse_for
from service.manager import QueueFull, RunConflict, RunManager
from service.responses import QUESTION_CHARS, last_user_text, report_text, step_text, understand
from service.runs import ALL, RunSettings
from service.store import RunRecord, RunStore, Status
from tools.metrics import ISO_DATE, Filters, IsoDate, ScopeError, check_scope, dashboard
from tools.settings import project_home
from tools.text import clip
from tools.warehouse import Warehouse, WarehouseError, as_records

log = logging.getLogger("finmatch.service")
T = TypeVar("T")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEEPALIVE_S = 15.0
EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1  # what a client may send back; a run's events are far fewer
PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
# Each error status of the service: the title of its problem, and when a route answers it.
ANSWERS: dict[int, tuple[str, str]] = {
    400: ("Bad request", "The body is not UTF-8 JSON, or a header is not what it must be"),
    401: ("Unauthorized", "No valid API key was sent"),
    404: ("Not found", "No run has this id"),
    405: ("Method not allowed", "The path does not take this method"),
    409: ("Conflict", "The run's status does not allow this"),
    413: ("Request body too large", "The body is larger than FINMATCH_MAX_BODY_BYTES"),
    422: ("Unprocessable request", "A parameter or the body is invalid: the detail says which"),
    429: ("Too many runs waiting", "The run queue is full; try again when runs have finished"),
    502: ("Run failed", "The run failed; POST /runs/{id}/resume continues it"),
    503: ("Not ready", "The warehouse, the checkpointer or the run history cannot be reached"),
}
OPEN_PATHS = frozenset({"/health"})  # answered without a key, for probes
# HTTP authentication schemes (IANA's registry and common others), the only first words
# of an Authorization header a 401 names back.
KNOWN_SCHEMES = frozenset(
    s.lower()
    for s in (
        "Basic", "Concealed", "Digest", "DPoP", "GNAP", "HOBA", "Mutual", "Negotiate",
        "NTLM", "OAuth", "PrivateToken", "SCRAM-SHA-1", "SCRAM-SHA-256", "vapid", "Token",
        "ApiKey", "AWS4-HMAC-SHA256",
    )
)  # fmt: skip
ASK_FOR_KEY = "send one of this service's API keys as 'Authorization: Bearer <key>'"


class ServiceSettings(BaseSettings):
    """How the service runs: keys, concurrency, limits and where it keeps its history."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    finmatch_api_keys: str = Field(
        "", description="Comma-separated bearer API keys; empty allows only loopback use"
    )
    finmatch_max_concurrent_runs: int = Field(4, ge=1, description="Runs executing at once")
    finmatch_queue_limit: int = Field(1000, ge=1, description="Most runs waiting in the queue")
    finmatch_max_body_bytes: int = Field(65536, ge=1024, description="Largest request body")
    finmatch_service_db: str = Field(
        "", description="Run history and events (default .finmatch/service.sqlite)"
    )

    def keys(self) -> list[str]:
        """Return the configured API keys."""
        return [k.strip() for k in self.finmatch_api_keys.split(",") if k.strip()]


def check_bind(host: str, settings: ServiceSettings) -> None:
    """Refuse to listen beyond loopback without an API key."""
    if host not in LOOPBACK and not settings.keys():
        raise ValueError(
            f"Refusing to listen on {host} without an API key: anyone who can reach it could "
            "start runs and read the data. Set FINMATCH_API_KEYS (comma-separated keys that "
            "clients send as 'Authorization: Bearer <key>'), or listen on 127.0.0.1."
        )


# -- schemas ---------------------------------------------------------------------------
class Problem(BaseModel):
    """An error: what went wrong and what to do about it."""

    # Every answer carries all four fields, `type` included: the schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    type: str = Field("about:blank", examples=["about:blank"])
    title: str = Field(examples=["Unprocessable request"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["Unknown focus area 'growth'; choose one of: ..."])


def _iso_datetime(value: Any) -> Any:
    """Pass on a date-time written from YYYY-MM-DD on; refuse numbers (timestamps)."""
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str) and ISO_DATE.match(value):
        return value
    raise ValueError(f"a date-time is written YYYY-MM-DDTHH:MM:SSZ; got {value!r}")


# The schema says `format: date` and `date-time`; pydantic alone would take 0 as 1970.
IsoDateTime = Annotated[datetime.datetime, BeforeValidator(_iso_datetime)]


class ResponsesAgentRequest(responses.ResponsesAgentRequest):
    """MLflow's ResponsesAgentRequest, taken as its schema says: `true`, not 1; 5, not "5"."""

    model_config = ConfigDict(strict=True)


class RunFilters(BaseModel):
    """Scope of a run; every field is optional and they combine with AND."""

    model_config = ConfigDict(extra="forbid")

    segment: str | None = Field(None, examples=["Retail"])
    lifecycle_stage: str | None = Field(None, examples=["Engaged"])
    product_type: str | None = Field(None, examples=["Credit Card"])
    date_from: IsoDate | None = Field(None, examples=["2024-01-01"])
    date_to: IsoDate | None = Field(None, examples=["2024-12-31"])


class RunRequest(BaseModel):
    """What to analyse, with which model, in which scope."""

    model_config = ConfigDict(extra="forbid")

    focus_area: str = Field(
        description="A focus area slug (see GET /focus-areas) or 'all' for the four and an "
        "executive summary",
        examples=["optimization-opportunities"],
    )
    model: str = Field("offline", description="A model name from GET /models")
    filters: RunFilters = Field(default_factory=RunFilters)
    question: str = Field(
        "", max_length=QUESTION_CHARS, description="Optional question for the model"
    )


class StepView(BaseModel):
    """A finished step and the numbers it reported."""

    focus_area: str
    step: str
    detail: str
    index: int | None = None
    total: int | None = None
    elapsed_ms: float | None = None


class RunView(BaseModel):
    """A run: what was asked, where it is, what it produced."""

    id: str
    thread_id: str
    focus_area: str
    model: str
    filters: dict[str, Any]
    status: Status
    created_at: datetime.datetime
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    attempts: int
    error: str = ""
    trace_id: str = ""
    steps: list[StepView] = Field(default_factory=list)
    result: dict[str, Any] | None = Field(
        None,
        description="When succeeded: {'report': Report} for one focus area, or "
        "{'reports': {slug: Report}, 'summary': {...}} for 'all'",
    )
    links: dict[str, str] = Field(default_factory=dict)


class RunPage(BaseModel):
    """A page of the run history, newest first."""

    items: list[RunView]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page")


class RecordPage(BaseModel):
    """A page of records in record_id order."""

    records: list[dict[str, Any]]
    next_cursor: str | None = Field(None, description="Pass as `after` for the next page")


def _time(value: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(value, datetime.UTC) if value else None


def _view(run: RunRecord, steps: list[StepView] | None = None) -> RunView:
    return RunView(
        id=run.id,
        thread_id=run.thread_id,
        focus_area=run.focus_area,
        model=run.model,
        filters=run.filters,
        status=run.status,
        created_at=_time(run.created_at) or datetime.datetime.now(datetime.UTC),
        started_at=_time(run.started_at),
        finished_at=_time(run.finished_at),
        attempts=run.attempts,
        error=run.error,
        trace_id=run.trace_id,
        steps=steps or [],
        result=run.result,
        links={
            "self": f"/runs/{run.id}",
            "events": f"/runs/{run.id}/events",
            "cancel": f"/runs/{run.id}/cancel",
            "resume": f"/runs/{run.id}/resume",
        },
    )


# -- the app ---------------------------------------------------------------------------
def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    body = Problem(title=title, status=status, detail=detail).model_dump()
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)


class _TooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, "too large")


class BodyLimit:
    """Answer bodies over `limit` bytes with 413: by Content-Length, or while reading."""

    def __init__(self, app: Any, limit: int) -> None:
        """Wrap `app`."""
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass the request on, counting its body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()  # reaches the HTTPException handler: a problem body
            return message

        await self.app(scope, counted, send)

    async def _reject(self, scope: Any, receive: Any, send: Any) -> None:
        detail = f"The request body is larger than {self.limit} bytes."
        await _problem(413, "Request body too large", detail)(scope, receive, send)


def key_problem(authorization: str | None, keys: list[bytes]) -> str | None:
    """Say what is wrong with an Authorization header value, or None when it holds a key."""
    if authorization is None:
        return f"The request has no Authorization header; {ASK_FOR_KEY}."
    scheme, _, token = authorization.partition(" ")
    given = token.strip().encode()
    ok = False
    for key in keys:  # compare with every key, in constant time: no early exit on a match
        ok |= hmac.compare_digest(given, key)
    if scheme.lower() != "bearer":
        if scheme.lower() in KNOWN_SCHEMES and token:
            return (
                f"The Authorization header uses the {scheme!r} scheme, not Bearer; {ASK_FOR_KEY}."
            )
        # Anything else may be the key itself, sent without its scheme: never repeated.
        return f"The Authorization header does not start with 'Bearer '; {ASK_FOR_KEY}."
    if not ok:  # the key sent is not repeated: it may be a real secret sent by mistake
        return f"The bearer key sent is not one of this service's keys; {ASK_FOR_KEY}."
    return None


class RequireKey:
    """Answer 401 to a request without a valid key before routing reads anything else."""

    def __init__(self, app: Any, keys: list[bytes]) -> None:
        """Wrap `app`; with no keys every request passes."""
        self.app, self.keys = app, keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass the request on when its path is open or it carries a key."""
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        problem = key_problem(authorization, self.keys)
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = _problem(401, "Unauthorized", problem, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document that a route answers these statuses with a Problem (`responses=`)."""
    return {
        status: {
            "description": ANSWERS[status][1],
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
        }
        for status in statuses
    }


def _documented(schema: dict[str, Any], secured: bool) -> dict[str, Any]:
    """Complete FastAPI's generated schema with what the service really answers."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(
        mode="serialization", ref_template="#/components/schemas/{model}"
    )
    # FastAPI documents its own validation body (HTTPValidationError) as a 422 of every
    # route with parameters. This service answers a Problem instead, and a route that can
    # answer 422 says so with `problems(422)`; the others cannot (a path segment is any
    # string).
    for operations in schema["paths"].values():
        for operation in operations.values():
            content = operation["responses"].get("422", {}).get("content", {})
            if "application/json" in content:
                del operation["responses"]["422"]
            for parameter in operation.get("parameters", []):
                # A query string or a header cannot carry null: an optional parameter is
                # one left out, so its schema is the type it has when sent.
                given = parameter["schema"]
                sent = [s for s in given.get("anyOf", []) if s != {"type": "null"}]
                if len(sent) == 1 and len(given["anyOf"]) == 2:
                    rest = {k: v for k, v in given.items() if k != "anyOf"}
                    parameter["schema"] = {**sent[0], **rest}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    if secured:  # the rule RequireKey applies, declared the same way
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the service's FINMATCH_API_KEYS",
            }
        }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if secured and path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = {
                    **problems(401)[401],
                    "headers": {
                        "WWW-Authenticate": {
                            "description": "Bearer: the scheme to authenticate with",
                            "required": True,
                            "schema": {"type": "string", "const": "Bearer"},
                        }
                    },
                }
    return schema


def _explain(errors: Any) -> str:
    """Validation errors as one line: where each is and what is wrong."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason}); send a JSON object")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if not err.get("loc") and err.get("type") == "value_error":  # a rule across fields
            parts.append(str(err.get("msg")).removeprefix("Value error, "))
            continue
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail)


def scope_query(
    segment: Annotated[str | None, Query()] = None,
    lifecycle_stage: Annotated[str | None, Query()] = None,
    product_type: Annotated[str | None, Query()] = None,
    date_from: Annotated[IsoDate | None, Query()] = None,
    date_to: Annotated[IsoDate | None, Query()] = None,
) -> RunFilters:
    """The scope filters of a GET request's query string."""
    return RunFilters(
        segment=segment,
        lifecycle_stage=lifecycle_stage,
        product_type=product_type,
        date_from=date_from,
        date_to=date_to,
    )


def create_app(settings: ServiceSettings | None = None, *, warehouse: str = "") -> FastAPI:
    """Build the service (it starts its run manager when served).

    `warehouse` is a warehouse URL; empty means FINMATCH_WAREHOUSE or the embedded default.
    """
    settings = settings or ServiceSettings()
    keys = [k.encode() for k in settings.keys()]
    store_path = (
        Path(settings.finmatch_service_db)
        if settings.finmatch_service_db
        else project_home() / "service.sqlite"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = RunStore(store_path)
        run_settings = RunSettings()
        manager = RunManager(
            store,
            warehouse=warehouse,
            checkpoints=run_settings.finmatch_checkpoints,
            tracing=run_settings.finmatch_tracing,
            max_concurrent=settings.finmatch_max_concurrent_runs,
            queue_limit=settings.finmatch_queue_limit,
        )
        await manager.start()
        app.state.manager = manager
        loop = asyncio.get_running_loop()

        def begin_shutdown() -> None:
            # Stop the runs now, so their end events reach the open event streams and
            # those close, instead of the server waiting for streams that never end.
            app.state.stopping = loop.create_task(manager.stop())

        app.state.request_shutdown = lambda: loop.call_soon_threadsafe(begin_shutdown)
        try:
            yield
        finally:
            await manager.stop()
            store.close()
            close_all()

    takes: dict[tuple[str, str], list[str]] = {}  # (method, path) -> its query parameters

    async def known_query(request: Request) -> None:
        """Refuse query parameters the route does not take (422)."""
        # Ignored, a misspelt filter (?segmnt=Retail) would widen the answer unnoticed.
        if not takes:  # the schema is the list of what each route takes
            for template, operations in app.openapi()["paths"].items():
                for method, operation in operations.items():
                    takes[(method.upper(), template)] = [
                        p["name"] for p in operation.get("parameters", []) if p["in"] == "query"
                    ]
        path = getattr(request.scope.get("route"), "path", "")
        names = takes.get((request.method, path))
        if names is None:
            return
        unknown = [name for name in request.query_params if name not in names]
        if unknown:
            listed = ", ".join(repr(name) for name in dict.fromkeys(unknown))
            what = f"takes: {', '.join(names)}" if names else "takes none"
            raise _fail(
                422,
                f"Unknown query parameter {listed}; {request.method} {path} {what}. "
                "Remove it or correct its name.",
            )

    app = FastAPI(
        title="FinMatch Agents",
        version="0.1.0",
        description="Focus-area agents over fpr_records: start runs, follow their steps, "
        "read reports, browse the metrics and the records.",
        lifespan=lifespan,
        dependencies=[Depends(known_query)],
    )
    app.add_middleware(BodyLimit, limit=settings.finmatch_max_body_bytes)
    if not keys:
        # Keyless, the service listens on loopback only; a page elsewhere that points a
        # name of its own at 127.0.0.1 (DNS rebinding) must not get answers through it.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOOPBACK, "[::1]"])
    # Added last, so outermost: an unauthenticated request learns nothing, not even the
    # body limit, and no byte of its body is read.
    app.add_middleware(RequireKey, keys=keys)

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException) -> Any:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        path, headers = request.url.path, dict(exc.headers or {})
        if exc.status_code == 413:
            detail = f"The request body is larger than {settings.finmatch_max_body_bytes} bytes."
        # Routing and FastAPI's body reading raise these with no more than the status said.
        elif exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {path}; the routes are listed at /docs."
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            # Starlette's Allow names the methods of the first route on the path only.
            methods = {
                method
                for route in app.router.routes
                if route.matches(request.scope)[0] != Match.NONE
                for method in getattr(route, "methods", None) or ()
            }
            headers["Allow"] = ", ".join(sorted(methods - {"HEAD"}))
            detail = f"{request.method} is not allowed on {path}; it takes {headers['Allow']}."
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            reason = f": {exc.__cause__}" if exc.__cause__ else ""
            detail = f"The body could not be read{reason}. Send a JSON object encoded in UTF-8."
        title = ANSWERS[exc.status_code][0] if exc.status_code in ANSWERS else "Error"
        return _problem(exc.status_code, title, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> Any:
        return _problem(422, "Unprocessable request", _explain(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_problem(request: Request, exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _problem(500, "Internal error", "The service failed; the error is in its log.")

    def manager(request: Request) -> RunManager:
        return request.app.state.manager

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, str]:
        """The process is up (no key needed)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses=problems(503))
    async def ready(request: Request) -> dict[str, str]:
        """The warehouse, the checkpointer and the run history can be reached."""
        m = manager(request)
        try:
            wh = await asyncio.to_thread(warehouse_for, warehouse)
            await asyncio.to_thread(wh.run, "SELECT count(*) AS n FROM fpr_records")
            await m.io(m.store.ping)
        except Exception as e:
            raise _fail(503, f"Not ready: {e}") from e
        if not m.ready():
            raise _fail(503, "Not ready: the run workers or the checkpointer are down.")
        return {"status": "ready", "warehouse": wh.url}

    @app.get("/focus-areas", tags=["agents"])
    async def focus_areas() -> list[dict[str, Any]]:
        """The focus areas: business challenge, agent solution and workflow steps."""
        return [
            {
                "slug": a.slug,
                "name": a.name,
                "business_challenge": a.business_challenge,
                "agent_solution": a.agent_solution,
                "steps": [{"name": s.name, "description": s.description} for s in a.steps],
            }
            for a in FOCUS_AREAS.values()
        ]

    @app.get("/models", tags=["agents"])
    async def models() -> list[dict[str, str]]:
        """The models a run can select; `offline` needs no LLM."""
        return [
            {"name": m.name, "kind": m.kind, "description": m.description}
            for m in available_models()
        ]

    async def on_warehouse(fn: Callable[[Warehouse], T]) -> T:
        """Call `fn` with the warehouse off the event loop; one that fails answers 503."""
        try:
            wh = await asyncio.to_thread(warehouse_for, warehouse)
            return await asyncio.to_thread(fn, wh)
        except WarehouseError as e:  # missing file or table, unreachable host: say which
            raise _fail(503, str(e)) from e

    async def check_filters(request: Request, filters: RunFilters) -> Filters:
        try:
            scope = Filters(**filters.model_dump())
        except ValidationError as e:  # a rule across fields, such as dates in order
            raise _fail(422, f"filters: {_explain(e.errors())}") from e
        try:
            await on_warehouse(lambda wh: check_scope(wh, scope))
        except ScopeError as e:
            raise _fail(422, str(e)) from e
        return scope

    @app.post(
        "/runs",
        status_code=202,
        tags=["runs"],
        responses=problems(400, 413, 422, 429, 503),
    )
    async def start_run(body: RunRequest, request: Request) -> RunView:
        """Queue a run; follow it with GET /runs/{id} or its event stream."""
        choices = [*FOCUS_AREAS, ALL]
        if body.focus_area not in choices:
            raise _fail(
                422, f"Unknown focus area {body.focus_area!r}; choose one of: {', '.join(choices)}"
            )
        try:
            check_model(body.model, any_import=False)
        except UnknownModel as e:
            raise _fail(422, str(e)) from e
        run = await queue_run(request, body.focus_area, body.model, body.filters, body.question)
        return _view(run)

    async def queue_run(
        request: Request, focus: str, model: str, filters: RunFilters, question: str
    ) -> RunRecord:
        """Check the filter values against the data and queue the run (429 when full)."""
        await check_filters(request, filters)
        scope = filters.model_dump(mode="json", exclude_none=True)
        try:
            return await manager(request).submit(focus, model, scope, question)
        except QueueFull as e:
            raise _fail(429, str(e)) from e

    async def load_run(request: Request, run_id: str) -> tuple[RunRecord, list[StepView]]:
        m = manager(request)
        run = await m.io(m.store.get, run_id)
        if run is None:
            raise _fail(404, f"No run {run_id}.")
        events = await m.io(m.store.events, run_id, 0, ("step_finish",))
        steps = [StepView(**{k: e.data.get(k) for k in StepView.model_fields}) for e in events]
        return run, steps

    @app.get("/runs/{run_id}", tags=["runs"], responses=problems(404))
    async def get_run(run_id: str, request: Request) -> RunView:
        """A run's status, finished steps with their numbers, and its report when done."""
        return _view(*await load_run(request, run_id))

    @app.post(
        "/runs/{run_id}/cancel",
        status_code=202,
        tags=["runs"],
        responses=problems(404, 409),
    )
    async def cancel_run(run_id: str, request: Request) -> RunView:
        """Stop a run at its next step; its finished steps are kept for resume."""
        return await act(request, run_id, manager(request).cancel)

    @app.post(
        "/runs/{run_id}/resume",
        status_code=202,
        tags=["runs"],
        responses=problems(404, 409),
    )
    async def resume_run(run_id: str, request: Request) -> RunView:
        """Queue a failed or cancelled run again; it continues after its last finished step."""
        return await act(request, run_id, manager(request).resume)

    async def act(request: Request, run_id: str, action: Any) -> RunView:
        try:
            await action(run_id)
        except KeyError as e:
            raise _fail(404, f"No run {run_id}.") from e
        except RunConflict as e:
            raise _fail(409, str(e)) from e
        return _view(*await load_run(request, run_id))

    @app.get(
        "/runs/{run_id}/events",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **problems(400, 404)},
    )
    async def run_events(
        run_id: str,
        request: Request,
        last_event_id: Annotated[
            str | None, Header(description="Resume after this event id")
        ] = None,
    ) -> StreamingResponse:
        """Server-Sent Events of the run: status, step_start, step_finish, report, end.

        Each event's id is its number in the run; reconnecting with `Last-Event-ID` sends
        what came after it, and a client that connects after the run ended gets all of it.
        """
        m = manager(request)
        if await m.io(m.store.get, run_id, False) is None:
            raise _fail(404, f"No run {run_id}.")
        given = last_event_id or "0"
        after = int(given) if EVENT_ID.fullmatch(given) else -1
        if not 0 <= after <= MAX_EVENT_ID:
            raise _fail(
                400,
                f"Last-Event-ID must be an event number from 0 to {MAX_EVENT_ID}; "
                f"got {clip(given, 40)!r}.",
            )

        async def stream() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            async for e in m.follow(run_id, after, idle=KEEPALIVE_S):
                if e is not None:
                    data = json.dumps({**e.data, "at": e.at}, default=str)
                    yield f"id: {e.seq}\nevent: {e.type}\ndata: {data}\n\n"
                elif await request.is_disconnected():
                    return
                else:
                    yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/runs", tags=["runs"], responses=problems(422))
    async def list_runs(
        request: Request,
        focus_area: Annotated[
            str | None, Query(description="Only this focus area (or 'all')")
        ] = None,
        model: Annotated[str | None, Query(description="Only runs with this model")] = None,
        status: Status | None = None,
        since: Annotated[IsoDateTime | None, Query(description="Created at or after")] = None,
        until: Annotated[IsoDateTime | None, Query(description="Created before")] = None,
        limit: Annotated[int, Query(ge=1, le=200, description="Runs per page")] = 20,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> RunPage:
        """The insights history: runs newest first, filtered, paginated."""
        before = None
        if cursor:
            created, _, last_id = cursor.partition("_")
            try:
                before = (float(created), last_id)
            except ValueError as e:
                raise _fail(422, f"cursor {cursor!r} is not a next_cursor from this API.") from e
        m = manager(request)
        runs = await m.io(
            lambda: m.store.history(
                focus_area=focus_area,
                model=model,
                status=status,
                since=since.timestamp() if since else None,
                until=until.timestamp() if until else None,
                before=before,
                limit=limit + 1,
            )
        )
        more = len(runs) > limit
        runs = runs[:limit]
        last = runs[-1] if runs and more else None
        return RunPage(
            items=[_view(r) for r in runs],
            next_cursor=f"{last.created_at!r}_{last.id}" if last else None,
        )

    @app.get("/metrics", tags=["data"], responses=problems(422, 503))
    async def metrics(
        request: Request, scope: Annotated[RunFilters, Depends(scope_query)]
    ) -> dict[str, Any]:
        """The dashboard: KPIs, financial metrics and distributions, with the SQL behind them."""
        filters = await check_filters(request, scope)
        evidence = await on_warehouse(lambda wh: dashboard(wh, filters))
        return {
            "scope": filters.describe(),
            **{k: v.model_dump(mode="json") for k, v in evidence.items()},
        }

    @app.get("/records", tags=["data"], responses=problems(422, 503))
    async def records(
        request: Request,
        scope: Annotated[RunFilters, Depends(scope_query)],
        page_size: Annotated[int, Query(ge=1, le=200, description="Records per page (1-200)")] = 50,
        after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> RecordPage:
        """The data explorer: records in record_id order, a page at a time (keyset)."""
        filters = await check_filters(request, scope)
        where, params = filters.where()
        if after is not None:
            where += " AND record_id > :after"
            params["after"] = after
        sql = f"SELECT * FROM fpr_records WHERE {where} ORDER BY record_id LIMIT :n"
        params["n"] = page_size + 1
        result = await on_warehouse(lambda wh: wh.run(sql, params))
        rows = as_records(result.columns, result.rows)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return RecordPage(records=rows, next_cursor=rows[-1]["record_id"] if more else None)

    # -- the MLflow Responses agent contract ----------------------------------------------
    def output_item(text: str) -> dict[str, Any]:
        return ResponsesAgent.create_text_output_item(text, str(uuid.uuid4()))

    async def responses_of(
        request: Request, run: RunRecord, trace_header: bool
    ) -> AsyncIterator[ResponsesAgentStreamEvent | str]:
        """The run's steps as output items, then the report; a string when it failed."""
        m = manager(request)
        async for e in m.follow(run.id):
            if e is None or e.type not in ("step_finish", "end"):
                continue
            if e.type == "step_finish":
                item = output_item(step_text(e.data))
                yield ResponsesAgentStreamEvent(type="response.output_item.done", item=item)
                continue
            done = await m.io(m.store.get, run.id)
            if done is None or done.status != "succeeded" or done.result is None:
                status = done.status if done else "lost"
                reason = f": {done.error}" if done and done.error else ""
                yield (
                    f"Run {run.id} ended {status}{reason}. Its finished steps are saved; "
                    f"POST /runs/{run.id}/resume continues it."
                )
                return
            custom = {
                "run_id": run.id,
                "focus_area": run.focus_area,
                "model": run.model,
                "filters": run.filters,
                "thread_id": run.thread_id,
                "trace_id": done.trace_id,
            }
            yield ResponsesAgentStreamEvent(
                type="response.output_item.done",
                item=output_item(report_text(done.result)),
                custom_outputs=custom,
                **({"trace_id": done.trace_id} if trace_header else {}),
            )
            return

    async def invoke(
        body: ResponsesAgentRequest,
        request: Request,
        x_mlflow_return_trace_id: Annotated[
            str | None, Header(description="'true' adds the trace id to the response")
        ] = None,
    ) -> Any:
        """Run the agents on a Responses request, as a Databricks serving endpoint would.

        Focus area, model and filters come from `custom_inputs` or the user's words
        ("financial impact for Retail customers"); unnamed, the four areas run with an
        executive summary. The answer holds each finished step and then the report; with
        `stream: true` they arrive as they happen. The run is queued, recorded and
        resumable like any POST /runs run (`custom_outputs.run_id`).
        """
        try:
            focus, model, filters = understand(body)
            scope = RunFilters(**filters)
        except ValidationError as e:
            raise _fail(422, f"custom_inputs.filters: {_explain(e.errors())}") from e
        except ValueError as e:
            raise _fail(422, str(e)) from e
        run = await queue_run(request, focus, model, scope, last_user_text(body)[:QUESTION_CHARS])
        trace_header = (x_mlflow_return_trace_id or "").lower() == "true"
        events = responses_of(request, run, trace_header)
        if body.stream:

            async def sse() -> AsyncIterator[str]:
                async for event in events:
                    if isinstance(event, str):
                        yield f"data: {json.dumps({'error': event})}\n\n"
                        break
                    yield f"data: {event.model_dump_json(exclude_none=True)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(
                sse(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        items: list[dict[str, Any]] = []
        custom: dict[str, Any] = {}
        async for event in events:
            if isinstance(event, str):
                raise _fail(502, event)
            items.append(event.model_dump()["item"])
            custom = event.custom_outputs or custom
        metadata = {"trace_id": custom["trace_id"]} if trace_header else None
        response = ResponsesAgentResponse(output=items, custom_outputs=custom, metadata=metadata)
        return response.model_dump(exclude_none=True)

    contract: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "A ResponsesAgentResponse, or with `stream: true` Server-Sent "
            "Events of ResponsesAgentStreamEvent ending with `data: [DONE]`",
            "content": {"text/event-stream": {}},
        },
        **problems(400, 413, 422, 429, 502, 503),
    }
    for path, api in (("/invocations", "MLflow"), ("/responses", "OpenAI")):
        app.post(
            path,
            summary=f"Invoke the agents ({api} Responses)",
            tags=["responses"],
            responses=contract,
        )(invoke)

    generated = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema FastAPI generates, completed once with the real answers."""
        if app.openapi_schema is None:
            app.openapi_schema = _documented(generated(), secured=bool(keys))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


__all__ = ["ServiceSettings", "check_bind", "create_app"]
