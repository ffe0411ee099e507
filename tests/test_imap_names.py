"""Mailbox names between text and the wire: modified UTF-7 both ways, and quoting."""

from __future__ import annotations

import pytest

from agent.imap import decode_modified_utf7, encode_modified_utf7
from agent.imap.names import mailbox_arg, quote


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Junk & Spam", "Junk &- Spam"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
    ],
)
def test_folder_names_round_trip_through_modified_utf7(text: str, wire: str) -> None:
    assert encode_modified_utf7(text) == wire
    assert decode_modified_utf7(wire) == text


def test_a_broken_modified_utf7_run_is_kept_as_sent() -> None:
    assert decode_modified_utf7("Bad &Jjo") == "Bad &Jjo"
    assert decode_modified_utf7("Bad &!!!-x") == "Bad &!!!-x"


def test_quoting_escapes_backslash_and_double_quote() -> None:
    assert quote('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'


def test_a_mailbox_argument_is_modified_utf7_then_quoted() -> None:
    assert mailbox_arg('Ärger & "Spaß"') == '"&AMQ-rger &- \\"Spa&AN8-\\""'
