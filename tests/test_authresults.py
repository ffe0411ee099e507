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


def _summary(verdicts: AuthVerdicts) -> AuthVerdicts:
    """Only the four summaries, to compare with a literal AuthVerdicts."""
    return AuthVerdicts(
        spf=verdicts.spf, dkim=verdicts.dkim, dmarc=verdicts.dmarc, arc=verdicts.arc
    )


def _verdicts(parse: Parse, *values: str | bytes, trusted: tuple[str, ...] = ()) -> AuthVerdicts:
    return _summary(parse_auth_verdicts(parse(_raw(*values)), trusted_authserv_ids=trusted))


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
    assert _summary(reading.verdicts) == AuthVerdicts(spf=PASS, dkim=PASS, dmarc=PASS)
    assert (reading.trusted, reading.unparseable) == (1, 0)
    assert _verdicts(parse, MICROSOFT_FAIL) == AuthVerdicts(
        spf=AuthResult.SOFTFAIL, dkim=AuthResult.NONE, dmarc=FAIL
    )


def test_microsoft_header_without_authserv_id_never_matches_a_trusted_list(parse: Parse) -> None:
    reading = read_auth_results(parse(_raw(MICROSOFT)), trusted_authserv_ids=("mx.test",))
    assert _summary(reading.verdicts) == AuthVerdicts()
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
    assert _summary(reading.verdicts) == AuthVerdicts(dkim=PASS)


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
    assert _summary(reading.verdicts) == AuthVerdicts()
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
        "mx.test; dkim=pass (unterminated comment",
        'mx.test; dkim=fail reason="unterminated',
        "mx.test; dkim=pass (" + "(" * 5000 + ")" * 5000,  # authres recurses per nesting level
        "mx.test; dkim=pass header.d=" + "a" * MAX_HEADER_CHARS,
        "mx.test 2; dkim=pass",
    ],
)
def test_an_unparseable_topmost_header_is_counted_not_raised(parse: Parse, value: str) -> None:
    forged_below = "mx.test; dkim=pass; spf=pass"
    reading = read_auth_results(parse(_raw(value, forged_below)), trusted_authserv_ids=())
    assert _summary(reading.verdicts) == AuthVerdicts()
    assert (reading.trusted, reading.unparseable) == (0, 1)


def test_an_unreadable_field_ends_the_trusted_run(parse: Parse) -> None:
    values = ("mx.test; spf=pass", "mx.test; dkim=pass (open", "mx.test; dkim=pass")
    reading = read_auth_results(parse(_raw(*values)), trusted_authserv_ids=("mx.test",))
    assert _summary(reading.verdicts) == AuthVerdicts(spf=PASS)
    assert (reading.trusted, reading.unparseable) == (1, 1)


@pytest.mark.parametrize(
    "bad",
    ["dkim", "dkim=", "dkim=pass header.d", "=pass", "spf=pass smtp.mailfrom=a@b stray words"],
)
def test_an_unreadable_resinfo_is_counted_and_its_neighbours_are_read(
    parse: Parse, bad: str
) -> None:
    values = (f"mx.test; spf=fail smtp.mailfrom=a.test; {bad}; dmarc=pass", "mx.test; arc=pass")
    reading = read_auth_results(parse(_raw(*values)), trusted_authserv_ids=("mx.test",))
    assert _summary(reading.verdicts) == AuthVerdicts(spf=FAIL, dmarc=PASS, arc=PASS)
    assert (reading.trusted, reading.unparseable) == (2, 1)


def test_headers_past_the_limit_are_not_examined(parse: Parse) -> None:
    values = ["mx.test; none"] * MAX_HEADERS + ["mx.test; dkim=pass"]
    assert _verdicts(parse, *values, trusted=("mx.test",)) == AuthVerdicts()
    assert _verdicts(parse, *values[1:], trusted=("mx.test",)).dkim is PASS


# --- real-world deviations, read resinfo by resinfo --------------------------------------------


def _reading(parse: Parse, *values: str, trusted: tuple[str, ...] = ()) -> AuthVerdicts:
    return parse_auth_verdicts(parse(_raw(*values)), trusted_authserv_ids=trusted)


def test_microsofts_tenant_token_between_resinfos_is_skipped(parse: Parse) -> None:
    value = (
        "spf=pass (sender IP is 104.47.124.209) smtp.helo=example.outlook.com; outlook.com;"
        " dkim=none (message not signed) header.d=none;outlook.com; dmarc=pass action=none"
        " header.from=outlook.com;"
    )
    reading = read_auth_results(parse(_raw(value)), trusted_authserv_ids=("topmost",))
    assert _summary(reading.verdicts) == AuthVerdicts(spf=PASS, dkim=AuthResult.NONE, dmarc=PASS)
    assert reading.unparseable == 0
    dmarc = reading.verdicts.details[2]
    assert (dmarc.authserv_id, dmarc.properties) == (
        None,
        (("header.from", "outlook.com"), ("action", "none")),
    )


def test_empty_mailfrom_of_a_bounce_is_kept_as_a_property(parse: Parse) -> None:
    verdicts = _reading(parse, "spf=none (sender IP is ) smtp.mailfrom=<>;")
    assert verdicts.spf is AuthResult.NONE
    assert verdicts.details[0].properties == (("smtp.mailfrom", "<>"),)


def test_yahoos_legacy_domainkeys_field_gives_dkim(parse: Parse) -> None:
    value = (
        "mta4007.mail.ne1.yahoo.com  from=yahoo.com; domainkeys=neutral (no sig);"
        "  from=yahoo.com; dkim=pass (ok)"
    )
    verdicts = _reading(parse, value, trusted=("*.yahoo.com",))
    assert verdicts.dkim is PASS
    assert verdicts.methods == {"domainkeys": AuthResult.NEUTRAL, "dkim": PASS}


def test_url_valued_properties_nested_comments_and_folded_reasons_are_read(parse: Parse) -> None:
    value = (
        "mx.test; bimi=pass header.d=example.com header.selector=default"
        " policy.authority=pass policy.authority-uri=https://example.com/vmc.pem"
        ' header.l=https://example.com/logo.svg; dkim=fail reason="signature\r\n verification'
        ' failed" (a (nested; with semicolon) comment)header.d=a.test;dmarc=pass'
    )
    verdicts = _reading(parse, value)
    bimi, dkim, _ = verdicts.details
    assert dict(bimi.properties)["header.l"] == "https://example.com/logo.svg"
    assert dict(bimi.properties)["policy.authority-uri"] == "https://example.com/vmc.pem"
    assert (dkim.result, dkim.reason, dkim.comment) == (
        FAIL,
        "signature verification failed",
        "a (nested; with semicolon) comment",
    )
    assert verdicts.dmarc is PASS


@pytest.mark.parametrize(
    ("word", "result"),
    [
        ("tempfail", AuthResult.TEMPERROR),
        ("unknown", AuthResult.PERMERROR),
        ("bestguesspass", AuthResult.NONE),
        ("softpass", AuthResult.NEUTRAL),
        ("hardfail", FAIL),
    ],
)
def test_result_words_outside_rfc_8601_are_normalised_and_the_raw_word_kept(
    parse: Parse, word: str, result: AuthResult
) -> None:
    (detail,) = _reading(parse, f"mx.test; dmarc={word} header.from=a.test").details
    assert (detail.result, detail.raw_result) == (result, word)


def test_every_method_is_recorded_with_reason_comment_and_properties(parse: Parse) -> None:
    value = (
        "mx.test; compauth=pass reason=100; iprev=pass policy.iprev=192.0.2.1 (host.test);"
        " dkim-atps=neutral; x-ptr=pass smtp.helo=host.test"
    )
    verdicts = _reading(parse, value)
    assert verdicts.methods == {
        "compauth": PASS,
        "iprev": PASS,
        "dkim-atps": AuthResult.NEUTRAL,
        "x-ptr": PASS,
    }
    compauth, iprev, _, _ = verdicts.details
    assert compauth.reason == "100"
    assert (iprev.comment, iprev.properties) == ("host.test", (("policy.iprev", "192.0.2.1"),))


def test_each_dkim_signature_is_kept_and_any_pass_makes_the_summary(parse: Parse) -> None:
    value = (
        "mx.test; dkim=fail header.d=a.test header.s=one; dkim=pass header.i=@b.test header.s=two"
    )
    verdicts = _reading(parse, value)
    assert verdicts.dkim is PASS
    assert [(s.domain, s.selector, s.result) for s in verdicts.dkim_signatures] == [
        ("a.test", "one", FAIL),
        ("b.test", "two", PASS),
    ]


def test_methods_split_over_several_trusted_fields_are_all_read(parse: Parse) -> None:
    # iCloud's layout: one field per method, each from its own host.
    values = (
        'bimi.icloud.com; bimi=skipped reason="insufficient dmarc"',
        "arc.icloud.com; arc=pass",
        "dmarc.icloud.com; dmarc=none header.from=a.test",
        "dkim-verifier.icloud.com; dkim=fail header.d=a.test",
        "dkim-verifier.icloud.com; dkim=pass header.d=b.test",
        "spf.icloud.com; spf=pass smtp.mailfrom=a@a.test",
    )
    verdicts = _reading(parse, *values, trusted=("*.icloud.com",))
    assert _summary(verdicts) == AuthVerdicts(spf=PASS, dkim=PASS, dmarc=AuthResult.NONE, arc=PASS)
    assert [s.domain for s in verdicts.dkim_signatures] == ["a.test", "b.test"]


def test_a_lower_dkim_pass_for_a_domain_already_reported_above_changes_nothing(
    parse: Parse,
) -> None:
    values = ("mx.test; dkim=fail header.d=a.test", "mx.test; dkim=pass header.d=a.test")
    verdicts = _reading(parse, *values, trusted=("mx.test",))
    assert verdicts.dkim is FAIL
    assert len(verdicts.dkim_signatures) == 2


def test_a_suffix_rule_trusts_per_host_ids_and_stops_at_another_host(parse: Parse) -> None:
    values = (
        "mta1.mail.gq1.yahoo.com; spf=fail smtp.mailfrom=a.test",
        "mx.evil.test; dkim=pass",
        "mta2.mail.gq1.yahoo.com; dkim=pass; dmarc=pass",
    )
    assert _verdicts(parse, *values, trusted=("*.yahoo.com",)) == AuthVerdicts(spf=FAIL)


def test_topmost_with_an_exact_rule_trusts_the_top_field_and_matching_ones_below(
    parse: Parse,
) -> None:
    values = ("spf=fail smtp.mailfrom=a.test", "mx.test; dkim=pass", "evil.test; dmarc=pass")
    assert _verdicts(parse, *values, trusted=("topmost", "mx.test")) == AuthVerdicts(
        spf=FAIL, dkim=PASS
    )


def test_look_alike_fields_are_never_read(parse: Parse) -> None:
    raw = (
        b"X-ME-Authentication-Results: mx.test; dkim=pass; spf=pass\r\n"
        b"X-Original-Authentication-Results: mx.test; dmarc=pass\r\n" + _raw("mx.test; spf=fail")
    )
    verdicts = parse_auth_verdicts(parse(raw), trusted_authserv_ids=("mx.test",))
    assert _summary(verdicts) == AuthVerdicts(spf=FAIL)


def test_an_empty_property_value_keeps_its_resinfo(parse: Parse) -> None:
    # Gmail, 2010: "smtp.mail=" with nothing after it.
    verdicts = _reading(parse, "mx.google.com; spf=neutral (best guess) smtp.mail=")
    assert verdicts.spf is AuthResult.NEUTRAL
    assert verdicts.details[0].properties == (("smtp.mail", ""),)


def test_comments_around_the_dot_of_a_property_name_are_allowed(parse: Parse) -> None:
    # RFC 8601 B.7 writes "policy (A dot can go here) . (like that) expired".
    value = "mx.test; dkim (c) / 1 (c) = (c) fail policy (c) . (c) expired (c) = (c) 1362471462"
    (detail,) = _reading(parse, value).details
    assert (detail.result, detail.properties) == (FAIL, (("policy.expired", "1362471462"),))


def test_resinfos_of_one_shape_read_again_keep_their_own_values(parse: Parse) -> None:
    # Each resinfo shape is parsed once and kept: the values must still be each message's own.
    def signature(domain: str, selector: str, reason: str) -> tuple[str | None, str | None, str]:
        value = f'mx.test; dkim=fail reason="{reason}" header.d={domain} header.s={selector}'
        (detail,) = read_auth_results(parse(_raw(value)), trusted_authserv_ids=()).verdicts.details
        assert detail.reason is not None
        return (
            dict(detail.properties).get("header.d"),
            dict(detail.properties).get("header.s"),
            detail.reason,
        )

    assert signature("a.test", "s1", "bad sig") == ("a.test", "s1", "bad sig")
    assert signature("b.test", "s2", "no key") == ("b.test", "s2", "no key")
    assert signature("a.test", "s1", "bad sig") == ("a.test", "s1", "bad sig")
