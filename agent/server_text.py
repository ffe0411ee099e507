"""Text a server sent, made valid Unicode before anything stores, prints or serves it.

aiosmtplib decodes replies as UTF-8 with `surrogateescape`: each byte that is not UTF-8 becomes a
lone surrogate (U+DC80..U+DCFF). Such a string cannot be encoded as UTF-8, so one stored reply
would make every later rendering of it fail (status page, `once --json`, JSON logs).

`valid_text` turns each lone surrogate into a visible escape: a byte kept by surrogateescape
becomes `\\xNN` (what `bytes.decode("utf-8", "backslashreplace")` gives for the same bytes),
any other lone surrogate `\\udNNN`. An escape rather than U+FFFD because an operator reading a
transcript can then tell which bytes the server sent (a Latin-1 "é" shows as `\\xe9`), and it
matches how IMAP text is shown (`agent.imap.responses.printable`). Valid UTF-8, non-ASCII
included, is kept as it is.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["valid_text"]

_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with every lone surrogate replaced by a visible backslash escape."""
    return _LONE_SURROGATE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"
