"""Parsing the IMAP responses the adapter reads (LIST, FETCH, SEARCH, SELECT), without a server."""

from __future__ import annotations

import pytest

from agent.imap import ListedFolder, parse_list_response
from agent.imap.responses import announces_new_mail, parse_fetch, parse_search, parse_uidvalidity


def test_list_lines_parse_quoted_literal_nil_and_encoded_names() -> None:
    lines: list[bytes | bytearray] = [
        b'(\\HasNoChildren \\Junk) "/" Junk',
        b'(\\Noselect \\HasChildren) "/" "[Gmail]"',
        b'() "/" "Junk E-mail"',
        b'() "." {11}',
        bytearray(b'Bulk "Mail"'),
        b'() NIL "with \\"quote\\" and \\\\"',
        b'() "/" "Entw&APw-rfe"',
        b"not a list line",
    ]
    folders = parse_list_response(lines)
    assert folders == [
        ListedFolder("Junk", frozenset({"\\hasnochildren", "\\junk"}), "/"),
        ListedFolder("[Gmail]", frozenset({"\\noselect", "\\haschildren"}), "/"),
        ListedFolder("Junk E-mail", frozenset(), "/"),
        ListedFolder('Bulk "Mail"', frozenset(), "."),
        ListedFolder('with "quote" and \\', frozenset(), None),
        ListedFolder("Entwürfe", frozenset(), "/"),
    ]
    assert [folder.selectable for folder in folders] == [True, False, True, True, True, True]


def test_fetch_finds_the_literal_and_size_of_its_uid_among_unsolicited_lines() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (FLAGS (\\Recent))",  # unsolicited, no body
        b"1 FETCH (UID 7 RFC822.SIZE 999 BODY[]<0> {5}",
        bytearray(b"hello"),
        b")",
    ]
    assert parse_fetch(lines, 7) == (b"hello", 999)
    assert parse_fetch(lines, 8) is None


def test_fetch_items_after_the_literal_count_and_the_size_defaults_to_the_literal() -> None:
    assert parse_fetch([b"2 FETCH (BODY[] {2}", bytearray(b"hi"), b" UID 4)"], 4) == (b"hi", 2)


def test_search_gives_every_number_and_rejects_anything_else() -> None:
    assert parse_search([b"3 5", b""]) == [3, 5]
    with pytest.raises(ValueError, match=r"unexpected '3 x'"):
        parse_search([b"3 x"])


def test_select_uidvalidity_and_new_mail_announcements() -> None:
    selected = [b"0 EXISTS", b"OK [UIDVALIDITY 42] UIDs valid", b"[READ-WRITE] Selected"]
    assert parse_uidvalidity(selected) == 42
    assert parse_uidvalidity([b"[READ-WRITE] Selected"]) is None
    assert announces_new_mail(b"* 3 EXISTS") and announces_new_mail(b"* 1 RECENT")
    assert not announces_new_mail(b"* 3 EXPUNGE")
