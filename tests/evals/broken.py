"""Deliberately broken analysts for the eval suite's own tests (scripted stand-ins for a
hosted LLM, which cannot run here)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from graphs.areas import FOCUS_AREAS
from tests.graphs.scripted import ScriptedChatModel, answer


def inventing(ctx: Any) -> BaseChatModel:
    """Factory: an Overall Performance analyst that writes a number no evidence holds."""
    sections = [
        (title, "Conversions rose by 73.15% after the campaign, a figure we made up.")
        for title in FOCUS_AREAS["overall-performance"].titles
    ]
    return ScriptedChatModel(replies=[answer("Conversions rose by 73.15%", sections, [])])
