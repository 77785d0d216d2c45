"""Hostile text in a prompt input (issue 39): JSON nested past the parser's depth, and characters no table may hold.

`loads` decodes one JSON document and turns every way it can fail (invalid JSON, nesting deep enough to exhaust
Python's recursion limit, a number too long to convert) into an `InputError` naming the row and the fix.
`bad_char` finds a lone surrogate (valid in JSON's `\\ud800` escapes, not encodable as UTF-8: parquet and every
tokenizer refuse it) or a NUL (cut short by C strings in tokenizers and servers) in a message's text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.errors import InputError

_BAD = re.compile("[\x00\ud800-\udfff]")


def loads(text: str, where: str, *, at_line: bool = False) -> Any:
    """The JSON value of `text`; an InputError naming `where` (and the line of a syntax error, `at_line`) when it
    is not one a prompt row can be."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{where}:{exc.lineno}" if at_line else where
        raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); fix: correct that line") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to read (thousands of levels); fix: flatten that row, "
                         "a prompt row needs a few levels at most") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InputError(f"{where}: JSON not readable ({str(exc)[:120]}); fix: correct that line") from None


def bad_char(text: str) -> str | None:
    """What is wrong with `text` as prompt text (a lone surrogate or a NUL, with its position), or None."""
    m = _BAD.search(text)
    if m is None:
        return None
    what = "a NUL character (U+0000)" if m.group() == "\x00" else f"a lone surrogate (U+{ord(m.group()):04X})"
    return f"{what} at character {m.start()}"
