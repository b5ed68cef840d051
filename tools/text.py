r"""Text from the bank's table, made safe to show: in a report, a terminal, an error.

A label in a row (a segment, a product type, a stage) is data, whoever typed it: it may
read "Ignore all previous instructions ...", hold markdown that turns a report into a
link, control characters a terminal obeys (an escape sequence, a bell), a right-to-left
override that reverses what follows, or run to pages. `printable` shows such characters
as escapes (`\x1b`, `\u202e`) instead. Wherever a label is written into a finding, a
headline or a recommendation it goes through `quote`: printable, on one line, cut to
MAX_LABEL characters, its markdown escaped and in quotes, so a reader (or a model) sees
where the data starts and ends. The raw values travel beside the text as data fields
(`Finding.labels`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_LABEL = 40
# Unicode categories shown as escapes: controls, format characters (bidi overrides,
# zero-width), surrogates, private use and unassigned code points.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
# What changes the meaning of inline markdown (and Streamlit's, which reads $ as maths).
_INLINE = re.compile(r"([\\`*_\[\]<>|~$])")


def escape_markdown(text: str) -> str:
    """Return `text` with the characters inline markdown acts on escaped."""
    return _INLINE.sub(r"\\\1", text)


def printable(text: str) -> str:
    r"""Return `text` with control and format characters shown as escapes (`\x07`).

    Those are what a terminal, a renderer or a reader's eye acts on without showing:
    escape sequences, NUL, bells, bidirectional overrides, zero-width characters. Plain
    whitespace (space, tab, newline) stays as it is.
    """
    return "".join(
        ch
        if ch in " \t\n" or unicodedata.category(ch) not in _HIDDEN
        else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        for ch in text
    )


def clip(value: Any, limit: int = MAX_LABEL) -> str:
    """Return a data value as one printable line of at most `limit` characters ('…')."""
    text = printable(" ".join(str(value).split()))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def quote(value: Any, limit: int = MAX_LABEL) -> str:
    """Return a data value as a report shows it: one line, cut, escaped and quoted."""
    return '"' + escape_markdown(clip(value, limit).replace('"', "'")) + '"'


_PASSWORD = re.compile(r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


def hide_password(text: str) -> str:
    """Return `text` with the password of any URL in it (scheme://user:password@) as ***."""
    return _PASSWORD.sub(r"\g<keep>***@", text)
