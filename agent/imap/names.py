"""Mailbox names between text and the wire: RFC 3501 modified UTF-7 and quoted strings. No I/O."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode_modified_utf7", "encode_modified_utf7", "mailbox_arg", "quote"]


def decode_modified_utf7(name: str) -> str:
    """A mailbox name as sent on the wire (RFC 3501 modified UTF-7) to text; bad runs kept as is."""
    out: list[str] = []
    i = 0
    while i < len(name):
        start = name.find("&", i)
        if start < 0:
            out.append(name[i:])
            break
        out.append(name[i:start])
        end = name.find("-", start + 1)
        if end < 0:
            out.append(name[start:])
            break
        chunk = name[start + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                padded = b64 + "=" * (-len(b64) % 4)
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                out.append(name[start : end + 1])
        i = end + 1
    return "".join(out)


def encode_modified_utf7(name: str) -> str:
    """Text to a mailbox name for the wire (RFC 3501 modified UTF-7)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def quote(text: str) -> str:
    """`text` as an RFC 3501 quoted string (section 9): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_arg(name: str) -> str:
    """A mailbox name as a command argument: modified UTF-7, quoted."""
    return quote(encode_modified_utf7(name))
