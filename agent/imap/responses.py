"""Pure parsers of the IMAP responses the adapter reads, as aioimaplib hands them over.

aioimaplib gives a response as a list of items without the leading `* `: each line as `bytes`,
each literal as a `bytearray` right after the line that announced it (`{n}`), and the tagged
reply's text last. These functions read that shape; none does I/O or imports aioimaplib.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from agent.imap.log import LOG, Log
from agent.imap.names import decode_modified_utf7

__all__ = [
    "TEXT_MAX",
    "ListedFolder",
    "announces_new_mail",
    "is_line",
    "lists_capabilities",
    "parse_fetch",
    "parse_list_response",
    "parse_search",
    "parse_uidvalidity",
    "printable",
]

TEXT_MAX: Final = 200  # server text quoted in errors and logs is cut here

_NEW_MAIL_RE: Final = re.compile(rb"^\*\s+\d+\s+(?:EXISTS|RECENT)\b", re.IGNORECASE)
_UIDVALIDITY_RE: Final = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_FETCH_RE: Final = re.compile(rb"^\d+ FETCH \(", re.IGNORECASE)
_FETCH_BODY_RE: Final = re.compile(rb"BODY\[\](?:<\d+>)? \{(\d+)\}$", re.IGNORECASE)
_FETCH_UID_RE: Final = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_FETCH_SIZE_RE: Final = re.compile(rb"\bRFC822\.SIZE (\d+)", re.IGNORECASE)
_LIST_RE: Final = re.compile(
    rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)*") (?P<name>.+)$',
    re.IGNORECASE | re.DOTALL,
)
_LITERAL_RE: Final = re.compile(rb"^\{(\d+)\+?\}$")


@dataclass(frozen=True)
class ListedFolder:
    """One LIST entry: the decoded name, lower-cased attributes, and the hierarchy delimiter."""

    name: str
    flags: frozenset[str]
    delimiter: str | None

    @property
    def selectable(self) -> bool:
        return not self.flags & {"\\noselect", "\\nonexistent"}


def parse_list_response(
    lines: Sequence[bytes | bytearray], *, log: Log = LOG
) -> list[ListedFolder]:
    """LIST entries from aioimaplib's untagged lines (without `* LIST`); a literal name follows its
    `{n}` line as a separate item. Lines that do not parse are skipped with a warning to `log`."""
    folders: list[ListedFolder] = []
    i = 0
    while i < len(lines):
        line = bytes(lines[i])
        i += 1
        match = _LIST_RE.match(line)
        if match is None:
            log.warning("ignoring a LIST line that does not parse: %s", printable(line))
            continue
        raw_name = match["name"]
        literal = _LITERAL_RE.match(raw_name)
        if literal is not None:
            if i >= len(lines) or not isinstance(lines[i], bytearray):
                log.warning("ignoring a LIST line without its literal: %s", printable(line))
                continue
            name_bytes = bytes(lines[i])
            i += 1
        elif raw_name.startswith(b'"'):
            name_bytes = _unquote(raw_name)
        else:
            name_bytes = raw_name.split(b" ", 1)[0]
        delim = match["delim"]
        folders.append(
            ListedFolder(
                name=decode_modified_utf7(name_bytes.decode("utf-8", "replace")),
                flags=frozenset(
                    flag.decode("ascii", "replace").lower() for flag in match["flags"].split()
                ),
                delimiter=None
                if delim.upper() == b"NIL"
                else _unquote(delim).decode("utf-8", "replace"),
            )
        )
    return folders


def _unquote(quoted: bytes) -> bytes:
    """The content of a quoted string that starts `quoted` (anything after it is ignored)."""
    out = bytearray()
    i = 1
    while i < len(quoted):
        char = quoted[i]
        if char == 0x5C and i + 1 < len(quoted):  # backslash escapes the next byte
            out.append(quoted[i + 1])
            i += 2
            continue
        if char == 0x22:
            break
        out.append(char)
        i += 1
    return bytes(out)


def parse_fetch(lines: Sequence[Any], uid: int) -> tuple[bytes, int] | None:
    """The body literal and RFC822.SIZE of `uid` among aioimaplib's FETCH lines.

    aioimaplib gives [b'n FETCH (UID u RFC822.SIZE s BODY[]<0> {k}', bytearray(literal), b')'];
    items after the literal land in the line that follows it, and unsolicited FETCH lines (flag
    changes) may be mixed in.
    """
    for i, line in enumerate(lines):
        if not is_line(line) or not _FETCH_RE.match(line):
            continue
        body = _FETCH_BODY_RE.search(line)
        if body is None or i + 1 >= len(lines) or is_line(lines[i + 1]):
            continue
        literal = bytes(lines[i + 1])
        items = line + (lines[i + 2] if i + 2 < len(lines) and is_line(lines[i + 2]) else b"")
        found = _FETCH_UID_RE.search(items)
        if found is None or int(found[1]) != uid:
            continue
        size = _FETCH_SIZE_RE.search(items)
        return literal, int(size[1]) if size else len(literal)
    return None


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """Every number of aioimaplib's SEARCH lines, in order; raises `ValueError` naming the first
    line that holds anything else."""
    numbers: list[int] = []
    for line in lines:
        for token in bytes(line).split():
            if not token.isdigit():
                raise ValueError(f"unexpected {printable(bytes(line))!r}")
            numbers.append(int(token))
    return numbers


def parse_uidvalidity(lines: Sequence[bytes | bytearray]) -> int | None:
    """The UIDVALIDITY a SELECT response announces, if any."""
    for line in lines:
        match = _UIDVALIDITY_RE.search(bytes(line))
        if match:
            return int(match[1])
    return None


def announces_new_mail(line: bytes) -> bool:
    """Whether a raw untagged line is `* n EXISTS` or `* n RECENT`."""
    return _NEW_MAIL_RE.match(line) is not None


def lists_capabilities(lines: Sequence[bytes | bytearray]) -> bool:
    """Whether an untagged CAPABILITY line is among aioimaplib's untagged lines of a response."""
    return any(is_line(line) and line.startswith(b"CAPABILITY ") for line in lines)


def is_line(item: object) -> TypeGuard[bytes]:
    # aioimaplib keeps response lines as bytes and literals as bytearray.
    return isinstance(item, bytes)


def printable(data: bytes) -> str:
    """Server bytes for a message: cut at `TEXT_MAX`, control and non-ASCII bytes escaped."""
    text = data[:TEXT_MAX].decode("ascii", "backslashreplace")
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
