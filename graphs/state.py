"""Graph state shared by the four focus areas.

State holds plain JSON-friendly dicts (Evidence, Finding and Report dumps) so checkpoints
read back anywhere (SQLite, Postgres, Studio) without custom serialisers. Every list
field has a reducer: a step appends, it never replaces.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class InputState(TypedDict, total=False):
    """What a caller may pass in: an optional question the narrative should answer.

    `shared_evidence` is evidence already gathered for the run's scope (the portfolio
    gathers each metric once for all four areas); steps reuse it instead of querying.
    """

    question: str
    shared_evidence: list[dict[str, Any]]


class OutputState(TypedDict):
    """What a finished run returns."""

    focus_area: str
    findings: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    report: dict[str, Any]


class State(TypedDict):
    """Everything a focus-area run accumulates."""

    question: str
    shared_evidence: list[dict[str, Any]]
    focus_area: str
    evidence: Annotated[list[dict[str, Any]], operator.add]
    findings: Annotated[list[dict[str, Any]], operator.add]
    steps: Annotated[list[dict[str, Any]], operator.add]
    analysis: dict[str, Any]
    report: dict[str, Any]
