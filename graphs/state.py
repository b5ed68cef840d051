"""Graph state shared by the four focus areas.

State holds plain JSON-friendly dicts (Evidence, Finding and Report dumps) so checkpoints
read back anywhere (SQLite, Postgres, Studio) without custom serialisers. Every list
field has a reducer: a step appends, it never replaces.

Checkpoints stay small: what accumulates is a `DeltaChannel`, so a checkpoint stores each
step's additions once instead of the whole list again at every step. The evidence a
portfolio run gathered for all four areas reaches each area in its context
(`Context.shared_evidence`), never in its state: the area keeps a reference to it
(`shared: true`, no rows), and `graphs.steps.with_rows` fills the rows back in where a
step reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from langgraph.channels import DeltaChannel
from typing_extensions import TypedDict


def extend(current: list[Any] | None, writes: Sequence[list[Any]]) -> list[Any]:
    """Append each write's items, in order (a reducer for a `DeltaChannel`)."""
    out = list(current or [])
    for items in writes:
        out.extend(items)
    return out


def last(current: Any, writes: Sequence[Any]) -> Any:
    """Keep the newest write (a value written once, stored once)."""
    return writes[-1] if writes else current


# A list steps append to, stored as its additions.
Appended: DeltaChannel[list[Any]] = DeltaChannel(extend)
# A value written once, late in a run: stored with the write, not in later checkpoints.
Written: DeltaChannel[Any] = DeltaChannel(last)


class InputState(TypedDict, total=False):
    """What a caller may pass in: an optional question the narrative should answer."""

    question: str


class OutputState(TypedDict):
    """What a finished run returns."""

    focus_area: str
    findings: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    report: dict[str, Any]


class State(TypedDict):
    """Everything a focus-area run accumulates."""

    question: str
    focus_area: str
    evidence: Annotated[list[dict[str, Any]], Appended]
    findings: Annotated[list[dict[str, Any]], Appended]
    steps: Annotated[list[dict[str, Any]], Appended]
    analysis: Annotated[dict[str, Any], Written]
    report: Annotated[dict[str, Any], Written]
