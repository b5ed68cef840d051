"""The eval suite's scenarios: the planted tables of `evals.planted`, and what each expects.

A scenario's table is built from the generated base table by SQL, and its truth (the
entity, the measure and the number) is read back from it by SQL (`evals.planted`). A
focus area's run on it is scored on its report's text: whether a statement names the
entity and the measure with the number (`evals.planted.states`), in the areas the truth
belongs to (`evals.planted.belongs`); and, on a null base, whether it claims anything
about what was not planted.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from evals.planted import SCENARIOS as PLANTED
from evals.planted import Scenario, Truth, belongs
from graphs.areas import FOCUS_AREAS

SCENARIOS: dict[str, Scenario] = {s.name: s for s in PLANTED}
BASE_ROWS = 20_000
BASE_SEED = 7


def expectations(scenario: Scenario, truth: Truth | None, focus: str) -> dict[str, Any]:
    """Return what a run of `focus` on the scenario's table is scored against."""
    area = FOCUS_AREAS[focus]
    return {
        "steps": [s.name for s in area.steps],
        "sections": list(area.titles),
        "truth": {} if truth is None else asdict(truth),  # mlflow takes no None
        "belongs": truth is not None and focus in belongs(truth),
        "null_base": scenario.base == "null",
    }


def truth_of(expected: dict[str, Any]) -> Truth | None:
    """The truth an expectation holds, as a `Truth` again."""
    t = expected.get("truth")
    if not t:
        return None
    where = tuple((str(c), str(v)) for c, v in t["where"])
    return Truth(t["kind"], t["measure"], where, float(t["value"]))
