"""The agent registry: each focus area's compiled graph, found from its spec.

A focus area is a spec (`graphs.areas.FOCUS_AREAS`) and a module named after its slug
(`financial-impact` -> `graphs.financial_impact`) whose `graph` is the compiled
workflow; the portfolio, the service, the evals and the CLI read the graphs from here.
"""

from __future__ import annotations

import importlib
from typing import Any

from graphs.areas import FOCUS_AREAS


def module_of(slug: str) -> str:
    """The module that holds the focus area `slug`'s graph."""
    return f"graphs.{slug.replace('-', '_')}"


AREA_GRAPHS: dict[str, Any] = {
    slug: importlib.import_module(module_of(slug)).graph for slug in FOCUS_AREAS
}
