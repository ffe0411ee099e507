"""Server text made valid: each byte that is not UTF-8 becomes a visible escape, the rest stays."""

from __future__ import annotations

import pytest

from agent.server_text import valid_text


@pytest.mark.parametrize(
    "raw",
    [
        b"plain ASCII",
        b"caf\xc3\xa9 \xe2\x9c\x93",  # valid UTF-8 is kept
        b"caf\xe9",  # Latin-1
        b"\xff\xfe",
        b"\xc3",  # a sequence cut short
        b"\xed\xa0\x80",  # an encoded surrogate
    ],
)
def test_valid_text_shows_each_undecodable_byte_as_decoding_with_backslashreplace_would(
    raw: bytes,
) -> None:
    decoded = raw.decode("utf-8", "surrogateescape")  # as aiosmtplib decodes a reply
    assert valid_text(decoded) == raw.decode("utf-8", "backslashreplace")
    valid_text(decoded).encode("utf-8")


def test_valid_text_escapes_a_lone_surrogate_that_no_byte_explains() -> None:
    assert valid_text("a\ud800b") == "a\\ud800b"
