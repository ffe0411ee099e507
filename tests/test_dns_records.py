"""Parsing and judging DNS records, no DNS involved: SPF, DMARC, DKIM, MTA-STS, TLS-RPT, DNSBL."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agent.dns.records import (
    Alignment,
    CheckResult,
    DkimKey,
    DmarcPolicy,
    DnsCheck,
    DnsReport,
    RecordError,
    blocklist_query_name,
    classify_blocklist_answer,
    dkim_key_problem,
    dmarc_names,
    parse_dkim_key,
    parse_dmarc,
    parse_mta_sts,
    parse_spf,
    parse_tls_rpt,
    same_address,
    select_dmarc,
    select_mta_sts,
    select_spf,
    select_tls_rpt,
)

# --- SPF -------------------------------------------------------------------------------------


def test_select_spf_takes_only_records_with_exactly_the_spf1_version() -> None:
    txts = [
        "v=spf1 -all",
        "V=SPF1 ip4:192.0.2.1 -all",
        "v=spf10 -all",
        "v=spf1",
        "google-site-verification=abc",
        "spf1 -all",
    ]
    assert select_spf(txts) == ["v=spf1 -all", "V=SPF1 ip4:192.0.2.1 -all", "v=spf1"]


@pytest.mark.parametrize(
    ("record", "lookups"),
    [
        ("v=spf1 -all", 0),
        ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all", 0),
        ("v=spf1 a mx ptr include:_spf.example.com exists:%{i}._spf.example.com -all", 5),
        ("v=spf1 a/24 mx:mail.example.com/24//64 a:%{d}.example.com ?all", 3),
        ("v=spf1 ip4:192.0.2.1 redirect=_spf.example.com", 1),
        # RFC 7208 section 6.1: with an "all" mechanism, redirect= never takes effect.
        ("v=spf1 ip4:192.0.2.1 -all redirect=_spf.example.com", 0),
        ("v=spf1  +ip4:192.0.2.1   exp=explain.example.com  -all", 0),
        ("v=spf1 include:example.com. unknown-mod=%{l}x -all", 1),
        ("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all", 1),
    ],
)
def test_parse_spf_accepts_valid_records_and_counts_their_lookups(
    record: str, lookups: int
) -> None:
    assert parse_spf(record).lookups == lookups


def test_parse_spf_exposes_includes_redirect_and_terms() -> None:
    record = parse_spf("v=spf1 -ip4:192.0.2.1 include:a.example.com redirect=b.example.com")
    assert record.includes == ("a.example.com",)
    assert record.redirect == "b.example.com"
    assert [(t.qualifier, t.name, t.value) for t in record.terms[:2]] == [
        ("-", "ip4", "192.0.2.1"),
        ("+", "include", "a.example.com"),
    ]
    assert not record.has_all


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("v=spf2 -all", "expected to start with v=spf1"),
        ("v=spf1 moo -all", "unknown mechanism 'moo'"),
        ("v=spf1 ip4:192.0.2.300 -all", "not an IPv4 address"),
        ("v=spf1 ip4:2001:db8::1 -all", "not an IPv4 address"),
        ("v=spf1 ip6:192.0.2.1 -all", "not an IPv6 address"),
        ("v=spf1 ip4:192.0.2.0/33 -all", "prefix length from 0 to 32"),
        ("v=spf1 ip4:192.0.2.0/024 -all", "prefix length from 0 to 32"),
        ("v=spf1 ip6:2001:db8::/129 -all", "prefix length from 0 to 128"),
        ("v=spf1 a/33 -all", "IPv4 prefix length over 32"),
        ("v=spf1 mx//129 -all", "IPv6 prefix length over 128"),
        ("v=spf1 a:example -all", "not a fully qualified domain"),
        ("v=spf1 include: -all", "include needs a domain"),
        ("v=spf1 include -all", "include needs a domain"),
        ("v=spf1 exists -all", "exists needs a domain"),
        ("v=spf1 -all:foo", "all takes no argument"),
        ("v=spf1 exists:%{z}.example.com -all", "bad macro"),
        ("v=spf1 exists:%{c}.example.com -all", "bad macro"),  # c, r, t: only in exp text
        ("v=spf1 exists:100%.example.com -all", "bad macro"),
        ("v=spf1 redirect=a.example.com redirect=b.example.com", "redirect= appears more"),
        ("v=spf1 a:exa\u00e9mple.com -all", "non-ASCII"),
        ("v=spf1 a:bad..example.com -all", "not a valid domain name"),
    ],
)
def test_parse_spf_names_the_bad_term(record: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_spf(record)


# --- DMARC -----------------------------------------------------------------------------------


def test_parse_dmarc_reads_policy_alignment_and_report_addresses() -> None:
    record = parse_dmarc(
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=50; "
        "rua=mailto:agg@example.com,mailto:big@example.net!10m, https://r.example.com/dmarc; "
        "ruf=mailto:forensic@example.com"
    )
    assert record.policy is DmarcPolicy.REJECT
    assert record.subdomain_policy is DmarcPolicy.QUARANTINE
    assert (record.adkim, record.aspf, record.pct) == (Alignment.STRICT, Alignment.RELAXED, 50)
    assert record.rua == (
        "mailto:agg@example.com",
        "mailto:big@example.net!10m",
        "https://r.example.com/dmarc",
    )
    assert record.ruf == ("mailto:forensic@example.com",)
    assert record.bad_uris == ()
    assert record.effective_policy(inherited=False) is DmarcPolicy.REJECT
    assert record.effective_policy(inherited=True) is DmarcPolicy.QUARANTINE


def test_parse_dmarc_defaults_and_keeps_malformed_report_uris_apart() -> None:
    record = parse_dmarc("v=DMARC1; p=none; rua=dmarc@example.com")
    assert (record.adkim, record.aspf, record.pct, record.subdomain_policy) == (
        Alignment.RELAXED,
        Alignment.RELAXED,
        100,
        None,
    )
    assert record.rua == ()
    assert record.bad_uris == ("dmarc@example.com",)
    assert record.effective_policy(inherited=True) is DmarcPolicy.NONE


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("v=DMARC1", r"no p= \(policy\)"),
        ("p=none; v=DMARC1", "expected v=DMARC1 as the first tag"),
        ("v=DMARC1; p=maybe", "p= expected none, quarantine or reject, got 'maybe'"),
        ("v=DMARC1; p=none; sp=block", "sp= expected none, quarantine or reject"),
        ("v=DMARC1; p=none; adkim=x", "adkim= expected r or s"),
        ("v=DMARC1; p=none; pct=101", "pct= expected 0 to 100"),
        ("v=DMARC1; p=none; p=reject", "tag p appears twice"),
        ("v=DMARC1; p=none; rua", "malformed tag 'rua'"),
    ],
)
def test_parse_dmarc_refuses_what_receivers_would_not_apply(record: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_dmarc(record)


def test_select_dmarc_and_the_tree_walk_names() -> None:
    assert select_dmarc(["v=DMARC1; p=none", "v=DMARC1", "v=spf1 -all", "v=DMARC10; p=none"]) == [
        "v=DMARC1; p=none",
        "v=DMARC1",
    ]
    assert dmarc_names("example.com") == ["_dmarc.example.com"]
    assert dmarc_names("mail.eu.example.com") == [
        "_dmarc.mail.eu.example.com",
        "_dmarc.eu.example.com",
        "_dmarc.example.com",
    ]
    deep = dmarc_names(".".join(f"l{i}" for i in range(10)) + ".example.com")
    assert len(deep) == 7 and deep[-1] == "_dmarc.example.com"


# --- DKIM ------------------------------------------------------------------------------------


def _rsa_key_b64(bits: int, *, pkcs1: bool = False) -> str:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.PKCS1
        if pkcs1
        else serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return base64.b64encode(der).decode()


def test_parse_dkim_key_sizes_rsa_keys_as_verifiers_do() -> None:
    assert parse_dkim_key(f"v=DKIM1; k=rsa; p={_rsa_key_b64(2048)}") == DkimKey("rsa", 2048, False)
    # k= defaults to rsa; a bare RSAPublicKey (PKCS#1) is accepted by verifiers too; t=y: testing.
    key = _rsa_key_b64(1024, pkcs1=True)
    assert parse_dkim_key(f"v=DKIM1; t=y:s; p={key[:40]} {key[40:]}") == DkimKey("rsa", 1024, True)


def test_parse_dkim_key_sizes_ed25519_keys() -> None:
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    text = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    assert parse_dkim_key(text) == DkimKey("ed25519", 256, False)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("v=DKIM1; k=rsa; p=", r"key revoked \(empty p=\)"),
        ("v=DKIM1; k=rsa", r"no p= \(public key\)"),
        ("v=DKIM1; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", "RSA public key"),
        ("v=DKIM2; p=" + "A" * 20, "bad version"),
        ("v=DKIM1; k=dsa; p=AAAA", "unknown key type k=dsa"),
        ("v=DKIM1; k=ed25519; p=AAAA", "an Ed25519 key has 32 bytes, this one 3"),
        ("v=DKIM1; k=ed25519; p=!!!", "not valid base64"),
    ],
)
def test_parse_dkim_key_refuses_unusable_keys(record: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_dkim_key(record, name="s1._domainkey.example.com")


def test_dkim_key_problem_flags_rsa_keys_verifiers_refuse() -> None:
    assert dkim_key_problem(DkimKey("rsa", 512, False)) == (
        "RSA key of 512 bits: verifiers refuse keys under 1024"
    )
    assert dkim_key_problem(DkimKey("rsa", 1024, False)) is None
    assert dkim_key_problem(DkimKey("ed25519", 256, False)) is None


# --- MTA-STS and TLS-RPT ---------------------------------------------------------------------


def test_mta_sts_and_tls_rpt_records_parse_and_select() -> None:
    assert parse_mta_sts("v=STSv1; id=20260101T000000;").id == "20260101T000000"
    rpt = parse_tls_rpt("v=TLSRPTv1; rua=mailto:tls@example.com, https://r.example.com/tls")
    assert rpt.rua == ("mailto:tls@example.com", "https://r.example.com/tls")
    assert select_mta_sts(["v=STSv1; id=1", "v=spf1 -all"]) == ["v=STSv1; id=1"]
    assert select_tls_rpt(["v=TLSRPTv1;rua=mailto:a@b.c", "v=STSv1; id=1"]) == [
        "v=TLSRPTv1;rua=mailto:a@b.c"
    ]


@pytest.mark.parametrize(
    ("parse", "record", "message"),
    [
        (parse_mta_sts, "v=STSv1", "no id="),
        (parse_mta_sts, "v=STSv1; id=2026-01-01", "id= expected 1 to 32 letters or digits"),
        (parse_mta_sts, "id=1; v=STSv1", "expected v=STSv1 as the first tag"),
        (parse_tls_rpt, "v=TLSRPTv1", "no rua="),
        (parse_tls_rpt, "v=TLSRPTv1; rua=tls@example.com", "expected mailto: or https: URIs"),
    ],
)
def test_mta_sts_and_tls_rpt_refuse_malformed_records(
    parse: Callable[[str], object], record: str, message: str
) -> None:
    with pytest.raises(RecordError, match=message):
        parse(record)


# --- blocklists and addresses ----------------------------------------------------------------


def test_blocklist_query_names_reverse_ips_and_append_domains() -> None:
    assert blocklist_query_name("192.0.2.10", "zen.example.org") == "10.2.0.192.zen.example.org"
    assert blocklist_query_name("2001:db8::1", "bl.example.") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
    )
    assert blocklist_query_name("example.com.", "dbl.example.org") == "example.com.dbl.example.org"


@pytest.mark.parametrize(
    ("answer", "listed"),
    [
        ([], False),
        (["127.0.0.2"], True),
        (["127.0.0.4", "127.0.0.10"], True),
        (["127.255.255.252"], None),  # Spamhaus: malformed query
        (["127.255.255.254"], None),  # Spamhaus: query through a public resolver
        (["127.255.255.255"], None),  # Spamhaus: too many queries
        (["127.0.1.255"], None),  # Spamhaus DBL: IP queries prohibited
        (["127.0.0.1"], None),  # RFC 5782: never a listing (URIBL/SURBL refusals)
        (["198.51.100.7"], None),  # a resolver rewriting NXDOMAIN, not the blocklist
        (["127.0.0.2", "127.255.255.254"], None),
    ],
)
def test_blocklist_answers_error_codes_are_not_listings(
    answer: list[str], listed: bool | None
) -> None:
    result = classify_blocklist_answer(answer)
    assert result.listed is listed
    assert result.codes == tuple(answer)
    assert (result.error is None) == (listed is not None)


def test_same_address_compares_ipv6_spellings() -> None:
    assert same_address("2001:db8::1", "2001:0db8:0:0::1")
    assert not same_address("192.0.2.1", "192.0.2.2")
    assert not same_address("192.0.2.1", "not-an-ip")


def test_report_finds_a_check_by_target() -> None:
    result = CheckResult("example.com", DnsCheck.SPF, True, "v=spf1 -all")
    report = DnsReport(checks=(result,))
    assert report.check("example.com", DnsCheck.SPF) is result
    with pytest.raises(KeyError):
        report.check("example.com", DnsCheck.DKIM)
