"""Authentication-Results parsing: real receivers' formats, trust, and hostile headers."""

from __future__ import annotations

from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import Message

import pytest

from agent.model import AuthResult, AuthVerdicts
from agent.reading.authresults import (
    MAX_HEADER_CHARS,
    MAX_HEADERS,
    parse_auth_verdicts,
    read_auth_results,
)

PASS, FAIL = AuthResult.PASS, AuthResult.FAIL

RSPAMD = (
    "mx.test; dkim=pass header.d=good.test header.s=sel header.b=abc; spf=pass (mx.test: domain "
    "of a@good.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=a@good.test; "
    "dmarc=pass (policy=reject) header.from=good.test"
)
GMAIL_FOLDED = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.com header.s=20230601 header.b=AbCdEf12;\r\n"
    "       arc=pass (i=1 spf=pass spfdomain=example.com dkim=pass dkdomain=example.com dmarc=pass"
    " fromdomain=example.com);\r\n"
    "       spf=softfail (google.com: domain of transitioning sender@example.com does not designate"
    " 209.85.220.41 as permitted sender) smtp.mailfrom=sender@example.com;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"
)
MICROSOFT = (
    "spf=pass (sender IP is 209.85.128.54)\r\n smtp.mailfrom=gmail.com; dkim=pass (signature was"
    " verified)\r\n header.d=gmail.com;dmarc=pass action=none\r\n header.from=gmail.com;"
    "compauth=pass reason=100"
)
MICROSOFT_FAIL = (
    "spf=softfail (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=none (message not"
    " signed) header.d=none;dmarc=fail action=quarantine header.from=example.com;compauth=fail"
    " reason=001"
)
YAHOO = (
    "atlas-production.v2.mail-production.bf1.yahoo.com; dkim=pass header.i=@gmail.com"
    " header.s=20210112; spf=pass smtp.mailfrom=gmail.com; dmarc=pass(p=NONE,sp=QUARANTINE)"
    " header.from=gmail.com;"
)

Parse = Callable[[bytes], Message]
PARSERS: dict[str, Parse] = {
    "compat32": lambda raw: message_from_bytes(raw, policy=policy.compat32),
    "default": lambda raw: message_from_bytes(raw, policy=policy.default),
}


@pytest.fixture(params=sorted(PARSERS))
def parse(request: pytest.FixtureRequest) -> Parse:
    parser: Parse = PARSERS[request.param]
    return parser


def _raw(*values: str | bytes) -> bytes:
    lines = [
        b"Authentication-Results: "
        + (value if isinstance(value, bytes) else value.encode("utf-8"))
        + b"\r\n"
        for value in values
    ]
    return b"".join(lines) + b"From: a@good.test\r\nSubject: hi\r\n\r\nbody\r\n"


def _verdicts(parse: Parse, *values: str | bytes, trusted: tuple[str, ...] = ()) -> AuthVerdicts:
    return parse_auth_verdicts(parse(_raw(*values)), trusted_authserv_ids=trusted)


def test_rspamd_header_gives_spf_dkim_dmarc(parse: Parse) -> None:
    assert _verdicts(parse, RSPAMD) == AuthVerdicts(spf=PASS, dkim=PASS, dmarc=PASS, arc=None)


def test_gmail_folded_header_gives_all_four_methods(parse: Parse) -> None:
    assert _verdicts(parse, GMAIL_FOLDED) == AuthVerdicts(
        spf=AuthResult.SOFTFAIL, dkim=PASS, dmarc=PASS, arc=PASS
    )


def test_microsoft_header_without_authserv_id_is_read_when_trusting_the_topmost(
    parse: Parse,
) -> None:
    reading = read_auth_results(parse(_raw(MICROSOFT)), trusted_authserv_ids=())
    assert reading.verdicts == AuthVerdicts(spf=PASS, dkim=PASS, dmarc=PASS)
    assert (reading.trusted, reading.unparseable) == (1, 0)
    assert _verdicts(parse, MICROSOFT_FAIL) == AuthVerdicts(
        spf=AuthResult.SOFTFAIL, dkim=AuthResult.NONE, dmarc=FAIL
    )


def test_microsoft_header_without_authserv_id_never_matches_a_trusted_list(parse: Parse) -> None:
    reading = read_auth_results(parse(_raw(MICROSOFT)), trusted_authserv_ids=("mx.test",))
    assert reading.verdicts == AuthVerdicts()
    assert reading.trusted == 0


def test_yahoo_header_with_a_trailing_semicolon_parses(parse: Parse) -> None:
    assert _verdicts(parse, YAHOO) == AuthVerdicts(spf=PASS, dkim=PASS, dmarc=PASS)


def test_comments_anywhere_and_non_ascii_in_comments_are_tolerated(parse: Parse) -> None:
    value = (
        "mx.test (rspamd 3.8 \u00e9t\u00e9) 1; dkim = pass (good (nested) sig) header.d=x.test"
        " (the signer); spf=fail (caf\u00e9) smtp.mailfrom=a@x.test"
    )
    assert _verdicts(parse, value) == AuthVerdicts(spf=FAIL, dkim=PASS)


def test_undecodable_8bit_bytes_in_a_header_do_not_raise(parse: Parse) -> None:
    reading = read_auth_results(
        parse(_raw(b"mx.test; dkim=pass (\xff\xfe) header.d=x.test")), trusted_authserv_ids=()
    )
    assert reading.verdicts == AuthVerdicts(dkim=PASS)


def test_a_pass_among_several_results_for_one_method_wins(parse: Parse) -> None:
    value = "mx.test; dkim=fail header.d=a.test; dkim=pass header.d=b.test; dkim=neutral"
    assert _verdicts(parse, value).dkim is PASS


def test_without_a_pass_the_first_result_for_a_method_counts(parse: Parse) -> None:
    value = "mx.test; dkim=temperror header.d=a.test; dkim=fail header.d=b.test"
    assert _verdicts(parse, value).dkim is AuthResult.TEMPERROR


def test_result_tokens_are_case_insensitive_and_unknown_ones_are_permerror(parse: Parse) -> None:
    value = "mx.test; DKIM=PASS header.d=a.test; spf=hardfail smtp.mailfrom=a.test; dmarc=bogus"
    assert _verdicts(parse, value) == AuthVerdicts(spf=FAIL, dkim=PASS, dmarc=AuthResult.PERMERROR)


def test_none_header_and_missing_methods_give_none(parse: Parse) -> None:
    reading = read_auth_results(parse(_raw("mx.test; none")), trusted_authserv_ids=())
    assert reading.verdicts == AuthVerdicts()
    assert reading.trusted == 1
    assert _verdicts(parse) == AuthVerdicts()


def test_only_the_topmost_header_is_trusted_without_a_list(parse: Parse) -> None:
    real = "mx.test; dkim=fail header.d=good.test; spf=fail smtp.mailfrom=good.test"
    forged = "mx.test; dkim=pass; spf=pass; dmarc=pass; arc=pass"
    assert _verdicts(parse, real, forged) == AuthVerdicts(spf=FAIL, dkim=FAIL)


def test_headers_from_unlisted_authserv_ids_are_ignored(parse: Parse) -> None:
    values = ("mx.test; dkim=fail header.d=good.test", "evil.test; dkim=pass; dmarc=pass")
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts(dkim=FAIL)
    assert _verdicts(parse, *values, trusted=("other.test",)) == AuthVerdicts()


def test_trusted_authserv_ids_compare_case_insensitively(parse: Parse) -> None:
    assert _verdicts(parse, "MX.Test; dkim=pass", trusted=(" mx.TEST ",)).dkim is PASS


def test_several_trusted_headers_at_the_top_combine(parse: Parse) -> None:
    # One header per milter (opendkim, opendmarc, spf policy daemon), all with the same id.
    values = ("mx.test; dmarc=pass header.from=a.test", "mx.test; dkim=pass", "mx.test; spf=fail")
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts(
        spf=FAIL, dkim=PASS, dmarc=PASS
    )


def test_a_trusted_id_below_an_unlisted_header_is_not_trusted(parse: Parse) -> None:
    values = ("mx.test; spf=fail", "relay.evil.test; none", "mx.test; dkim=pass; dmarc=pass")
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts(spf=FAIL)


def test_a_forged_header_with_the_trusted_id_cannot_overrule_the_real_verdict(
    parse: Parse,
) -> None:
    values = ("mx.test; dkim=fail header.d=good.test; dmarc=fail", "mx.test; dkim=pass; dmarc=pass")
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts(dkim=FAIL, dmarc=FAIL)


def test_arc_authentication_results_are_not_read_as_the_receivers_verdict(parse: Parse) -> None:
    raw = b"ARC-Authentication-Results: i=1; mx.test; dkim=pass; spf=pass\r\n" + _raw()
    assert parse_auth_verdicts(parse(raw), trusted_authserv_ids=()) == AuthVerdicts()


@pytest.mark.parametrize(
    "value",
    [
        "",
        ";",
        "mx.test; dkim",
        "mx.test; dkim=pass (unterminated comment",
        "mx.test; dkim=pass;; spf=pass",
        "mx.test; dkim=pass (" + "(" * 5000 + ")" * 5000,  # authres recurses per nesting level
        "mx.test; dkim=pass header.d=" + "a" * MAX_HEADER_CHARS,
        "mx.test 2; dkim=pass",
    ],
)
def test_an_unparseable_topmost_header_is_counted_not_raised(parse: Parse, value: str) -> None:
    forged_below = "mx.test; dkim=pass; spf=pass"
    reading = read_auth_results(parse(_raw(value, forged_below)), trusted_authserv_ids=())
    assert reading.verdicts == AuthVerdicts()
    assert (reading.trusted, reading.unparseable) == (0, 1)


def test_an_unparseable_header_ends_the_trusted_run(parse: Parse) -> None:
    values = ("mx.test; spf=pass", "mx.test; dkim=", "mx.test; dkim=pass")
    reading = read_auth_results(parse(_raw(*values)), trusted_authserv_ids=("mx.test",))
    assert reading.verdicts == AuthVerdicts(spf=PASS)
    assert (reading.trusted, reading.unparseable) == (1, 1)


def test_headers_past_the_limit_are_not_examined(parse: Parse) -> None:
    values = ["mx.test; none"] * MAX_HEADERS + ["mx.test; dkim=pass"]
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts()
    assert _verdicts(parse, *values[1:], trusted=("mx.test",)).dkim is PASS
