"""The endpoint's OpenAPI schema documents the answers the routes really give.

Built in-process from `create_app` (no server): what `/openapi.json` serves. The answers
themselves are checked against it over HTTP in test_conformance.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import ServiceSettings, create_app

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
# The error statuses each operation can answer, without keys (a key adds 401 but to /health).
ERRORS = {
    ("get", "/health"): set(),
    ("get", "/ready"): {503},
    ("get", "/focus-areas"): set(),
    ("get", "/models"): set(),
    ("post", "/runs"): {400, 413, 422, 429, 503},
    ("get", "/runs"): {422},
    ("get", "/runs/{run_id}"): {404},
    ("post", "/runs/{run_id}/cancel"): {404, 409},
    ("post", "/runs/{run_id}/resume"): {404, 409},
    ("get", "/runs/{run_id}/events"): {400, 404},
    ("get", "/metrics"): {422, 503},
    ("get", "/records"): {422, 503},
    ("post", "/invocations"): {400, 413, 422, 429, 502, 503},
    ("post", "/responses"): {400, 413, 422, 429, 502, 503},
}


def spec(keys: str = "") -> dict[str, Any]:
    return create_app(ServiceSettings(finmatch_api_keys=keys)).openapi()


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }


def errors(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}


@pytest.mark.parametrize("keys", ["", "key-one,key-two"])
def test_every_error_answer_is_documented_as_a_problem(keys: str) -> None:
    schema = spec(keys)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for label, operation in operations(schema).items():
        for status, response in errors(operation).items():
            assert response["content"] == PROBLEM, (label, status)
            assert response["description"], (label, status)


def test_each_operation_documents_the_errors_it_can_answer() -> None:
    documented = {label: set(errors(op)) for label, op in operations(spec()).items()}
    assert documented == ERRORS


def test_with_keys_every_operation_but_health_documents_401() -> None:
    documented = {label: set(errors(op)) for label, op in operations(spec("k")).items()}
    assert documented == {
        label: statuses | ({401} if label[1] != "/health" else set())
        for label, statuses in ERRORS.items()
    }
    unauthorized = operations(spec("k"))[("get", "/models")]["responses"]["401"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


def test_the_problem_schema_requires_every_field() -> None:
    problem = spec()["components"]["schemas"]["Problem"]
    assert sorted(problem["required"]) == ["detail", "status", "title", "type"]
    assert {name: p["type"] for name, p in problem["properties"].items()} == {
        "type": "string",
        "title": "string",
        "status": "integer",
        "detail": "string",
    }


def test_parameters_are_documented_as_sent_never_null() -> None:
    """A query string or header cannot carry null: an optional parameter may be left out."""
    seen = {}
    for label, operation in operations(spec()).items():
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (label, parameter["name"])
            seen[(label, parameter["name"])] = parameter["schema"]
    assert seen[(("get", "/records"), "after")] == {
        "type": "string",
        "description": "next_cursor of the previous page",
        "title": "After",
    }
    assert seen[(("get", "/metrics"), "date_from")]["format"] == "date"
    assert seen[(("get", "/runs"), "status")]["enum"] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]


def test_the_first_request_is_checked_against_its_own_route() -> None:
    """Query parameters are checked against the schema from the very first request."""
    app = create_app(ServiceSettings(finmatch_api_keys=""))
    client = TestClient(app, base_url="http://localhost")  # keyless: loopback names only
    response = client.get("/metrics", params={"segmnt": "Retail"})
    assert response.status_code == 422, response.text
    assert "GET /metrics takes: segment, lifecycle_stage" in response.json()["detail"]
