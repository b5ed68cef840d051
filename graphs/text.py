"""Text from the bank's table, made safe to put in a report or in front of a model.

A label in a row (a segment, a product type, a stage) is data, whoever typed it: it may
read "Ignore all previous instructions ...", hold markdown that turns a report into a
link, or run to pages. Wherever such a value is written into a finding, a headline or a
recommendation it goes through `quote`: on one line, cut to MAX_LABEL characters, its
markdown escaped and in quotes, so a reader (or a model) sees where the data starts and
ends. The raw values travel beside the text as data fields (`Finding.labels`).
"""

from __future__ import annotations

import re
from typing import Any

MAX_LABEL = 40
# What changes the meaning of inline markdown (and Streamlit's, which reads $ as maths).
_INLINE = re.compile(r"([\\`*_\[\]<>|~$])")


def escape_markdown(text: str) -> str:
    """Return `text` with the characters inline markdown acts on escaped."""
    return _INLINE.sub(r"\\\1", text)


def clip(value: Any, limit: int = MAX_LABEL) -> str:
    """Return a data value as one line of at most `limit` characters (cut with '…')."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def quote(value: Any, limit: int = MAX_LABEL) -> str:
    """Return a data value as a report shows it: one line, cut, escaped and quoted."""
    return '"' + escape_markdown(clip(value, limit).replace('"', "'")) + '"'
