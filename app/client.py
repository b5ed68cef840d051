"""The dashboard's only way to the data and the agents: the agent endpoint over HTTP.

`Service` wraps the routes the dashboard uses. Every failure becomes a `ServiceError` with
a sentence a user can act on: the service cannot be reached (`ServiceDown`), or it refused
the request (its problem detail). `Follower` follows a run's event stream in a background
thread, reconnecting with `Last-Event-ID` when the connection drops, so a page can show
the steps as they finish without blocking its script.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SCOPE_KEYS = ("segment", "lifecycle_stage", "product_type", "date_from", "date_to")
LIVE = ("queued", "running")


class AppSettings(BaseSettings):
    """Where the agent endpoint is and the key to call it with."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    finmatch_service_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of the agent endpoint (finmatch serve)"
    )
    finmatch_service_api_key: SecretStr | None = Field(
        None, description="Bearer key for the endpoint (one of its FINMATCH_API_KEYS)"
    )
    finmatch_service_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to wait for an answer from the endpoint"
    )


class ServiceError(Exception):
    """The endpoint could not answer the request; the message says why and what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        """`status` is the HTTP status when the endpoint answered with an error."""
        super().__init__(message)
        self.status = status


class ServiceDown(ServiceError):
    """The endpoint cannot be reached at all."""


class Refused(ServiceError):
    """The endpoint refused the request (4xx): asking again will not help."""


def scope(filters: dict[str, Any]) -> dict[str, str]:
    """Return the non-empty scope filters as query/body values (dates as YYYY-MM-DD)."""
    return {k: str(v) for k, v in filters.items() if k in SCOPE_KEYS and v not in (None, "")}


class Service:
    """The agent endpoint's routes the dashboard uses."""

    def __init__(self, url: str, api_key: str = "", timeout_s: float = 30.0) -> None:
        """Talk to the endpoint at `url`, with `api_key` when it needs one."""
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: AppSettings | None = None) -> Service:
        """The endpoint named by the settings (FINMATCH_SERVICE_URL, ..._API_KEY)."""
        s = settings or AppSettings()
        key = s.finmatch_service_api_key.get_secret_value() if s.finmatch_service_api_key else ""
        return cls(s.finmatch_service_url, key, s.finmatch_service_timeout_s)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise ServiceError(
                f"The agent endpoint at {self.url} did not answer {method} {path} within "
                f"{self.timeout_s:g} s. It may be busy; try again."
            ) from e
        except httpx.TransportError as e:
            raise ServiceDown(
                f"The agent endpoint at {self.url} cannot be reached ({e}). Start it with "
                "`finmatch serve` (or `make app`), or set FINMATCH_SERVICE_URL to where it runs."
            ) from e
        if r.status_code >= 400:
            error = Refused if r.status_code < 500 else ServiceError
            raise error(problem(r, method, path), r.status_code)
        try:
            return r.json()
        except ValueError as e:
            raise ServiceError(
                f"{self.url} answered {method} {path} with something other than JSON; is "
                "FINMATCH_SERVICE_URL the agent endpoint (finmatch serve)?"
            ) from e

    # -- routes ------------------------------------------------------------------------
    def health(self) -> bool:
        """Whether the endpoint answers at all (within two seconds)."""
        try:
            self._call("GET", "/health", timeout=2.0)
        except ServiceError:
            return False
        return True

    def focus_areas(self) -> list[dict[str, Any]]:
        """GET /focus-areas."""
        result: list[dict[str, Any]] = self._call("GET", "/focus-areas")
        return result

    def models(self) -> list[dict[str, str]]:
        """GET /models."""
        result: list[dict[str, str]] = self._call("GET", "/models")
        return result

    def metrics(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET /metrics in a scope."""
        result: dict[str, Any] = self._call("GET", "/metrics", params=scope(filters or {}))
        return result

    def records(
        self, filters: dict[str, Any] | None = None, page_size: int = 50, after: str | None = None
    ) -> dict[str, Any]:
        """GET /records: one page in record_id order after the cursor `after`."""
        params: dict[str, Any] = {**scope(filters or {}), "page_size": page_size}
        if after:
            params["after"] = after
        result: dict[str, Any] = self._call("GET", "/records", params=params)
        return result

    def start_run(
        self, focus_area: str, model: str, filters: dict[str, Any], question: str = ""
    ) -> dict[str, Any]:
        """POST /runs; return the queued run."""
        body = {"focus_area": focus_area, "model": model, "filters": scope(filters)}
        if question.strip():
            body["question"] = question.strip()
        result: dict[str, Any] = self._call("POST", "/runs", json=body)
        return result

    def run(self, run_id: str) -> dict[str, Any]:
        """GET /runs/{id}."""
        result: dict[str, Any] = self._call("GET", f"/runs/{run_id}")
        return result

    def cancel(self, run_id: str) -> dict[str, Any]:
        """POST /runs/{id}/cancel."""
        result: dict[str, Any] = self._call("POST", f"/runs/{run_id}/cancel")
        return result

    def resume(self, run_id: str) -> dict[str, Any]:
        """POST /runs/{id}/resume."""
        result: dict[str, Any] = self._call("POST", f"/runs/{run_id}/resume")
        return result

    def history(
        self, *, limit: int = 20, cursor: str | None = None, **filters: Any
    ) -> dict[str, Any]:
        """GET /runs: a page of the history, newest first."""
        params = {k: v for k, v in filters.items() if v not in (None, "")}
        params["limit"] = limit
        if cursor:
            params["cursor"] = cursor
        result: dict[str, Any] = self._call("GET", "/runs", params=params)
        return result

    def events(
        self, run_id: str, after: int = 0, opened: Callable[[httpx.Client], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the run's events after number `after` while the connection lasts.

        The endpoint closes the stream once the run has ended; a resumed run's earlier
        `end` is followed by its new events on the same stream. `opened` gets the stream's
        client once the endpoint has accepted it (closing that client ends the stream).
        """
        headers = {**self.headers, "Last-Event-ID": str(after)} if after else self.headers
        # The endpoint sends a keep-alive comment every 15 s: a connection quiet for
        # three of those is dead (a laptop asleep, a dropped NAT entry).
        timeout = httpx.Timeout(self.timeout_s, read=max(self.timeout_s, 45.0))
        try:
            yield from self._events(run_id, headers, timeout, opened)
        except httpx.TransportError as e:
            raise ServiceDown(
                f"The agent endpoint at {self.url} cannot be reached or dropped the run's "
                f"events ({e or type(e).__name__})."
            ) from e

    def _events(
        self,
        run_id: str,
        headers: dict[str, str],
        timeout: httpx.Timeout,
        opened: Callable[[httpx.Client], None] | None,
    ) -> Iterator[dict[str, Any]]:
        with httpx.Client(base_url=self.url, timeout=timeout) as http:
            with connect_sse(http, "GET", f"/runs/{run_id}/events", headers=headers) as source:
                status = source.response.status_code
                if status >= 400:
                    source.response.read()
                    error = Refused if status < 500 else ServiceError
                    raise error(problem(source.response, "GET", f"/runs/{run_id}/events"), status)
                if opened is not None:
                    opened(http)
                for sse in source.iter_sse():
                    if not sse.data:  # the `retry:` advice and keep-alives carry no event
                        continue
                    data = sse.json()
                    if not isinstance(data, dict):
                        raise ValueError(f"event {sse.id} is not a JSON object: {sse.data[:100]}")
                    yield {"seq": int(sse.id) if sse.id else 0, "type": sse.event, **data}


def problem(r: httpx.Response, method: str, path: str) -> str:
    """The endpoint's own explanation of a refused request (its problem `detail`)."""
    try:
        detail = r.json().get("detail") or r.text
    except ValueError:
        detail = r.text[:300] or r.reason_phrase
    if r.status_code == 401:
        return (
            f"The agent endpoint refused the key ({detail}). Set FINMATCH_SERVICE_API_KEY to "
            "one of the endpoint's FINMATCH_API_KEYS."
        )
    return f"{method} {path} failed ({r.status_code}): {detail}"


@dataclass
class Follower:
    """Follows one run's event stream in a daemon thread; the page reads what arrived.

    Connection lost: it reconnects with the number of the last event it has (so nothing
    is missed or repeated), waiting a little longer after each failure in a row, and says
    so in `connection` until the endpoint takes the stream again; it gives up after
    `attempts` failures in a row, or at once when the endpoint refuses the stream (4xx).
    """

    service: Service
    run_id: str
    after: int = 0
    retry_s: float = 1.0
    attempts: int = 30
    events: list[dict[str, Any]] = field(default_factory=list)
    connection: str = ""  # empty while connected; else what went wrong
    done: bool = False
    _thread: threading.Thread | None = None
    _http: httpx.Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Follower:
        """Start following; returns self."""
        self._thread = threading.Thread(
            target=self._run, name=f"finmatch-follow-{self.run_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following now (the run itself goes on)."""
        self._stop.set()
        with self._lock:
            http, self.done = self._http, True
        if http is not None:
            http.close()  # ends a read that is waiting for the next event

    def snapshot(self) -> tuple[list[dict[str, Any]], str, bool]:
        """The events so far, the connection problem (if any) and whether following ended."""
        with self._lock:
            return list(self.events), self.connection, self.done

    def _opened(self, http: httpx.Client) -> None:
        with self._lock:
            self._http, self.connection = http, ""

    def _ended(self) -> bool:
        return bool(self.events) and self.events[-1]["type"] == "end"

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as e:  # noqa: BLE001 - whatever it was, the page must not wait forever
            with self._lock:
                self.connection, self.done = f"Stopped following the run: {e}", True

    def _follow(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                for event in self.service.events(self.run_id, self.after, self._opened):
                    with self._lock:
                        self.events.append(event)
                        self.after = max(self.after, event["seq"])
                    failures = 0
                if self._ended():  # the endpoint closed the stream after the run's end
                    with self._lock:
                        self.done = True
                    return
                raise ServiceError("the stream closed before the run ended")
            except Refused as e:
                with self._lock:
                    self.connection, self.done = f"Cannot follow the run: {e}", True
                return
            except (ServiceError, httpx.HTTPError, ValueError) as e:
                if self._stop.is_set():
                    return
                if self._ended():  # lost only the close that follows the end
                    with self._lock:
                        self.done = True
                    return
                failures += 1
                with self._lock:
                    self._http = None
                    if failures >= self.attempts:
                        self.connection = f"Stopped following the run: {e}"
                        self.done = True
                        return
                    self.connection = f"Connection to the run's events lost ({e}); reconnecting."
                # A pause before reconnecting, longer after each failure in a row.
                if self._stop.wait(min(self.retry_s * failures, 10.0)):
                    return
