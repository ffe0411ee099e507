"""DNS checks: against the zones the mail system's NSD serves, and the parts that need no DNS.

The zones (tests/mailsystem/configs.py): good.test is set up right (SPF, DKIM sel1, DMARC reject,
MTA-STS, TLS-RPT); bad.test's SPF excludes 127.0.0.1; broken-spf.test needs 12 lookups;
nodkim.test has no sel1 key and a revoked one; dmarc-none.test has p=none; dnsbl.test lists
127.0.0.2 and bad.test and answers 127.255.255.254 (an error code) for 127.0.0.3; 127.0.0.1's
PTR confirms forward, 127.0.0.4's does not, 127.0.0.2 has none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.app.service import Agent
from agent.config import Config, validate_config
from agent.dns.checks import (
    DnsPlan,
    SpfSender,
    declare_dns_series,
    plan_checks,
    run_checks,
    run_dns_checks,
    spf_verdict,
)
from agent.dns.records import BlocklistResult, CheckResult, DnsCheck, DnsReport
from agent.dns.resolver import DnsError, DnsErrorKind, Mx, Resolver, SyncResolver, Value
from agent.model import AuthResult
from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from tests.mailsystem import MailSystem
from tests.mailsystem.configs import (
    BROKEN_SPF_DOMAIN,
    DMARC_NONE_DOMAIN,
    DNSBL_ZONE,
    NODKIM_DOMAIN,
)
from tests.mailsystem.system import free_ports
from tests.mailsystem.topology import BAD_DOMAIN, GOOD_DOMAIN, SEED_DOMAIN

SECRET = "dns-checks-test-secret-0123456789"
SUBDOMAIN = f"sub.{GOOD_DOMAIN}"  # no records of its own: DMARC comes from good.test


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# --- pyspf with our resolver, no sockets ---------------------------------------------------------


class FakeSyncResolver(SyncResolver):
    """Answers from a dict of (name, type) -> values; a name in `failing` raises DnsError."""

    def __init__(
        self, records: Mapping[tuple[str, str], Sequence[Value]], failing: Sequence[str] = ()
    ) -> None:
        super().__init__(nameservers=[("127.0.0.1", 1)])
        self.records = records
        self.failing = failing
        self.asked: list[tuple[str, str]] = []

    def lookup(self, name: str, rdtype: str) -> tuple[Value, ...]:
        self.asked.append((name, rdtype))
        if name in self.failing:
            raise DnsError(DnsErrorKind.TIMEOUT, name, rdtype, "no answer")
        return tuple(self.records.get((name, rdtype), ()))


def test_spf_verdict_evaluates_includes_and_mx_through_our_resolver() -> None:
    resolver = FakeSyncResolver(
        {
            ("example.com", "TXT"): ["v=spf1 include:_spf.example.com mx -all", "other=txt"],
            ("_spf.example.com", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("example.com", "MX"): [Mx(10, "mx.example.com")],
            ("mx.example.com", "A"): ["198.51.100.25"],
        }
    )
    verdict = spf_verdict(
        resolver, ip="192.0.2.9", sender="probe@example.com", helo="a.test", timeout=5
    )
    assert verdict[0] is AuthResult.PASS
    ok_by_mx = spf_verdict(
        resolver, ip="198.51.100.25", sender="probe@example.com", helo="a.test", timeout=5
    )
    assert ok_by_mx[0] is AuthResult.PASS
    result, why = spf_verdict(
        resolver, ip="203.0.113.1", sender="probe@example.com", helo="a.test", timeout=5
    )
    assert (result, why) == (AuthResult.FAIL, "SPF fail - not authorized")
    assert ("_spf.example.com", "TXT") in resolver.asked


def test_spf_verdict_a_failed_lookup_is_a_temporary_error() -> None:
    resolver = FakeSyncResolver(
        {("example.com", "TXT"): ["v=spf1 include:_spf.example.com -all"]},
        failing=["_spf.example.com"],
    )
    result, why = spf_verdict(
        resolver, ip="192.0.2.9", sender="probe@example.com", helo="a.test", timeout=5
    )
    assert result is AuthResult.TEMPERROR
    assert "_spf.example.com" in why


def test_spf_verdict_enforces_the_void_lookup_limit() -> None:
    record = "v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com -all"
    resolver = FakeSyncResolver({("example.com", "TXT"): [record]})
    result, why = spf_verdict(
        resolver, ip="192.0.2.9", sender="probe@example.com", helo="a.test", timeout=5
    )
    assert result is AuthResult.PERMERROR
    assert "Void lookup limit of 2 exceeded" in why


# --- planning from the configuration -------------------------------------------------------------


def _config(
    tmp_path: Path,
    *,
    dns: dict[str, Any] | None,
    route: dict[str, Any] | None = None,
    **top: Any,
) -> Config:
    """Two routes (the first with sending IPs) and one seed; `route` overrides the first route's
    keys (None removes one), `top` adds top-level keys."""
    primary: dict[str, Any] = {
        "name": "primary",
        "host": "127.0.0.1",
        "tls": "none",
        "ehlo_name": "mail.good.test",
        "from": f"Probe <probe@{GOOD_DOMAIN}>",
        "envelope_from": f"bounces@{BAD_DOMAIN}",
        "sending_ips": ["127.0.0.1", "127.0.0.2"],
    }
    for key, value in (route or {}).items():
        if value is None:
            del primary[key]
        else:
            primary[key] = value
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "secret": SECRET,
        "routes": [
            primary,
            {"name": "relay", "host": "127.0.0.1", "tls": "none", "from": f"x@{GOOD_DOMAIN}"},
        ],
        "mailboxes": [
            {
                "name": "seed",
                "host": "127.0.0.1",
                "port": 1,  # nothing listens: watchers keep retrying in the background
                "tls": "none",
                "allow_plaintext_auth": True,
                "auth": {"username": "u", "password": "imap-password-1"},
                "address": f"seed@{SEED_DOMAIN}",
                "folders": {"junk": "Junk"},
            }
        ],
        **top,
    }
    if dns is not None:
        data["dns"] = dns
    return validate_config(data, base_dir=tmp_path, environ={})


def test_plan_checks_covers_sending_domains_ips_seeds_and_selectors(tmp_path: Path) -> None:
    dns = {
        "blocklists": {"ips": ["zen.example.org"], "domains": ["dbl.example.org"]},
        "dkim_selectors": {GOOD_DOMAIN: ["s1", "s2"]},
    }
    plan = plan_checks(_config(tmp_path, dns=dns))
    assert plan is not None
    assert plan.sending_domains == (GOOD_DOMAIN, BAD_DOMAIN)
    assert plan.seed_domains == (SEED_DOMAIN,)
    assert plan.sending_ips == ("127.0.0.1", "127.0.0.2")
    assert plan.spf_senders == (
        SpfSender(BAD_DOMAIN, "127.0.0.1", f"bounces@{BAD_DOMAIN}", "mail.good.test"),
        SpfSender(BAD_DOMAIN, "127.0.0.2", f"bounces@{BAD_DOMAIN}", "mail.good.test"),
    )
    assert plan.dkim_selectors == ((GOOD_DOMAIN, ("s1", "s2")),)
    series = plan.check_series()
    assert (BAD_DOMAIN, DnsCheck.SPF_AUTHORIZED) in series
    assert (GOOD_DOMAIN, DnsCheck.SPF_AUTHORIZED) not in series  # no route sends from it
    assert (GOOD_DOMAIN, DnsCheck.DKIM) in series and (BAD_DOMAIN, DnsCheck.DKIM) not in series
    assert (SEED_DOMAIN, DnsCheck.MX) in series
    assert ("127.0.0.2", DnsCheck.FCRDNS) in series
    assert len(series) == len(set(series))
    assert plan.blocklist_series() == [
        ("127.0.0.1", "zen.example.org"),
        ("127.0.0.2", "zen.example.org"),
        (GOOD_DOMAIN, "dbl.example.org"),
        (BAD_DOMAIN, "dbl.example.org"),
    ]


def test_plan_checks_a_bounce_mailbox_route_sends_from_the_bounce_domain(tmp_path: Path) -> None:
    bounces = {
        "name": "bounces",
        "host": "127.0.0.1",
        "port": 1,
        "tls": "none",
        "allow_plaintext_auth": True,
        "auth": {"username": "b", "password": "imap-password-2"},
        "address": f"bounces@{SEED_DOMAIN}",
    }
    route = {"bounce_mailbox": "bounces", "envelope_from": None}
    config = _config(tmp_path, dns={}, route=route, bounce_mailboxes=[bounces])
    plan = plan_checks(config)
    assert plan is not None
    assert {sender.sender for sender in plan.spf_senders} == {f"bounces@{SEED_DOMAIN}"}
    assert SEED_DOMAIN in plan.sending_domains


def test_no_dns_section_plans_nothing_and_declares_no_dns_series(tmp_path: Path) -> None:
    config = _config(tmp_path, dns=None)
    assert plan_checks(config) is None
    registry = new_registry()
    declare_dns_series(config, Recorder(registry))
    names = {family.name for family in registry.collect() for _ in family.samples}
    dns_names = {name for name in names if "dns" in name or "dkim" in name or "dmarc" in name}
    # A metric without labels is always exposed; it stays 0 until a run.
    assert dns_names == {"deliverability_dns_check_duration_seconds"}


# --- undecided checks ----------------------------------------------------------------------------


class HangingResolver(Resolver):
    """Answers like the real one for every name except those in `hang`, which never answer."""

    def __init__(self, hang: Sequence[str]) -> None:
        super().__init__(nameservers=[("127.0.0.1", 1)])
        self.hang = hang
        self.never = asyncio.Event()

    async def lookup(self, name: str, rdtype: str) -> tuple[Value, ...]:
        if name in self.hang:
            await self.never.wait()
        if rdtype == "TXT" and name == "example.com":
            return ("v=spf1 -all",)
        return ()


async def test_a_check_without_an_answer_is_undecided_and_the_others_still_run() -> None:
    plan = DnsPlan(sending_domains=("example.com",), sending_ips=("192.0.2.1",))
    resolver = HangingResolver(hang=["_dmarc.example.com"])
    report = await run_checks(plan, resolver, check_timeout=0.05)
    dmarc = report.check("example.com", DnsCheck.DMARC)
    assert dmarc.passed is None
    assert dmarc.detail == "no answer within the check's timeout (0.05 s)"
    assert report.check("example.com", DnsCheck.DMARC_ENFORCED).passed is None
    assert report.check("example.com", DnsCheck.SPF).passed is True
    assert report.check("192.0.2.1", DnsCheck.RDNS).passed is False
    assert [(r.target, r.check) for r in report.checks] == plan.check_series()


def test_an_undecided_check_keeps_its_last_value_and_counts_an_error() -> None:
    registry = new_registry()
    recorder = Recorder(registry)
    plan = DnsPlan(sending_domains=("example.com",))
    recorder.declare_dns(plan.check_series(), [("example.com", "dbl.example.org")])
    ok = "deliverability_dns_check_ok"
    errors = "deliverability_dns_check_errors_total"
    labels = {"target": "example.com", "check": "spf"}
    assert _sample(registry, ok, **labels) == 0
    assert _sample(registry, errors, check="dnsbl") == 0

    recorder.record(DnsReport(checks=(CheckResult("example.com", DnsCheck.SPF, True, ""),)))
    assert _sample(registry, ok, **labels) == 1
    undecided = DnsReport(
        checks=(CheckResult("example.com", DnsCheck.SPF, None, "timeout"),),
        blocklists=(BlocklistResult("example.com", "dbl.example.org", None, "error answer"),),
    )
    recorder.record(undecided)
    assert _sample(registry, ok, **labels) == 1
    assert _sample(registry, errors, check="spf") == 1
    assert _sample(registry, errors, check="dnsbl") == 1
    assert (
        _sample(
            registry, "deliverability_dnsbl_listed", target="example.com", zone="dbl.example.org"
        )
        == 0
    )

    recorder.declare_dns((), ())  # the dns section removed on reload: its series go
    assert _sample(registry, ok, **labels) is None
    assert _sample(registry, errors, check="spf") is None


# --- against the mail system's NSD ---------------------------------------------------------------


def _nsd_plan() -> DnsPlan:
    return DnsPlan(
        sending_domains=(
            GOOD_DOMAIN,
            BAD_DOMAIN,
            BROKEN_SPF_DOMAIN,
            NODKIM_DOMAIN,
            DMARC_NONE_DOMAIN,
            SUBDOMAIN,
        ),
        seed_domains=(SEED_DOMAIN, f"nomx.{GOOD_DOMAIN}"),
        dkim_selectors=((GOOD_DOMAIN, ("sel1",)), (NODKIM_DOMAIN, ("sel1", "revoked"))),
        spf_senders=(
            SpfSender(GOOD_DOMAIN, "127.0.0.1", f"sender@{GOOD_DOMAIN}", "mail.good.test"),
            SpfSender(BAD_DOMAIN, "127.0.0.1", f"sender@{BAD_DOMAIN}", "mail.good.test"),
            SpfSender(BROKEN_SPF_DOMAIN, "127.0.0.1", f"s@{BROKEN_SPF_DOMAIN}", "mail.good.test"),
        ),
        sending_ips=("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"),
        ip_zones=(DNSBL_ZONE,),
        domain_zones=(DNSBL_ZONE,),
    )


@pytest.fixture(scope="module")
def nsd_report(mail_system: MailSystem) -> DnsReport:
    """One run of every check over the test zones, shared by the tests that read it."""
    resolver = Resolver(nameservers=[("127.0.0.1", mail_system.ports.dns)], timeout=5)
    return asyncio.run(run_checks(_nsd_plan(), resolver, check_timeout=10))


def _verdicts(report: DnsReport, target: str) -> dict[DnsCheck, bool | None]:
    return {r.check: r.passed for r in report.checks if r.target == target}


@pytest.mark.mailsystem
def test_nsd_good_domain_passes_every_check(nsd_report: DnsReport) -> None:
    verdicts = _verdicts(nsd_report, GOOD_DOMAIN)
    assert verdicts == {check: True for check in verdicts}
    assert set(verdicts) == {
        DnsCheck.SPF,
        DnsCheck.SPF_LOOKUPS,
        DnsCheck.SPF_AUTHORIZED,
        DnsCheck.DKIM,
        DnsCheck.DMARC,
        DnsCheck.DMARC_ENFORCED,
        DnsCheck.DMARC_REPORTING,
        DnsCheck.MTA_STS,
        DnsCheck.TLS_RPT,
    }
    assert nsd_report.check(GOOD_DOMAIN, DnsCheck.SPF_AUTHORIZED).detail == "127.0.0.1: pass"
    assert nsd_report.check(GOOD_DOMAIN, DnsCheck.DKIM).detail == (
        "sel1._domainkey.good.test: rsa 2048 bits"
    )
    key = next(k for k in nsd_report.dkim_keys if k.domain == GOOD_DOMAIN)
    assert key.key is not None and (key.key.key_type, key.key.bits) == ("rsa", 2048)
    assert (GOOD_DOMAIN, 0) in nsd_report.spf_lookups
    dmarc = next(f for f in nsd_report.dmarc if f.domain == GOOD_DOMAIN)
    assert (dmarc.policy, dmarc.record.rua) == ("reject", ("mailto:dmarc@good.test",))


@pytest.mark.mailsystem
def test_nsd_spf_needing_more_than_ten_lookups_fails_and_breaks_authorisation(
    nsd_report: DnsReport,
) -> None:
    lookups = nsd_report.check(BROKEN_SPF_DOMAIN, DnsCheck.SPF_LOOKUPS)
    assert lookups.passed is False
    assert lookups.detail == "12 DNS lookups over the include tree (limit 10)"
    assert (BROKEN_SPF_DOMAIN, 12) in nsd_report.spf_lookups
    assert nsd_report.check(BROKEN_SPF_DOMAIN, DnsCheck.SPF).passed is True  # syntax is fine
    authorized = nsd_report.check(BROKEN_SPF_DOMAIN, DnsCheck.SPF_AUTHORIZED)
    assert authorized.passed is False
    assert authorized.detail == ("127.0.0.1: permerror (SPF Permanent Error: Too many DNS lookups)")


@pytest.mark.mailsystem
def test_nsd_spf_that_excludes_the_sending_ip_fails_authorisation(nsd_report: DnsReport) -> None:
    authorized = nsd_report.check(BAD_DOMAIN, DnsCheck.SPF_AUTHORIZED)
    assert (authorized.passed, authorized.detail) == (
        False,
        "127.0.0.1: fail (SPF fail - not authorized)",
    )
    assert nsd_report.check(BAD_DOMAIN, DnsCheck.SPF).passed is True


@pytest.mark.mailsystem
def test_nsd_missing_and_revoked_dkim_keys_fail(nsd_report: DnsReport) -> None:
    dkim = nsd_report.check(NODKIM_DOMAIN, DnsCheck.DKIM)
    assert dkim.passed is False
    assert dkim.detail == (
        "sel1._domainkey.nodkim.test: no key published; "
        "revoked._domainkey.nodkim.test: key revoked (empty p=)"
    )
    keys = {k.selector: k.key for k in nsd_report.dkim_keys if k.domain == NODKIM_DOMAIN}
    assert keys == {"sel1": None, "revoked": None}


@pytest.mark.mailsystem
def test_nsd_dmarc_none_is_valid_but_neither_enforced_nor_reporting(
    nsd_report: DnsReport,
) -> None:
    assert _verdicts(nsd_report, DMARC_NONE_DOMAIN) == {
        DnsCheck.SPF: True,
        DnsCheck.SPF_LOOKUPS: True,
        DnsCheck.DMARC: True,
        DnsCheck.DMARC_ENFORCED: False,
        DnsCheck.DMARC_REPORTING: False,
        DnsCheck.MTA_STS: False,
        DnsCheck.TLS_RPT: False,
    }
    assert nsd_report.check(DMARC_NONE_DOMAIN, DnsCheck.DMARC_ENFORCED).detail == "policy none"


@pytest.mark.mailsystem
def test_nsd_subdomain_gets_dmarc_from_its_parent_and_spf_is_missing(
    nsd_report: DnsReport,
) -> None:
    dmarc = nsd_report.check(SUBDOMAIN, DnsCheck.DMARC)
    assert dmarc.passed is True
    assert dmarc.detail.endswith("(from _dmarc.good.test)")
    assert nsd_report.check(SUBDOMAIN, DnsCheck.SPF).detail == (
        "no SPF record (TXT v=spf1) at sub.good.test"
    )
    assert nsd_report.check(SUBDOMAIN, DnsCheck.SPF).passed is False


@pytest.mark.mailsystem
def test_nsd_mx_of_seed_domains(nsd_report: DnsReport) -> None:
    seed = nsd_report.check(SEED_DOMAIN, DnsCheck.MX)
    assert (seed.passed, seed.detail) == (True, "10 mx.seed.test (127.0.0.1)")
    nomx = nsd_report.check(f"nomx.{GOOD_DOMAIN}", DnsCheck.MX)
    assert (nomx.passed, nomx.detail) == (False, "no MX record at nomx.good.test")


@pytest.mark.mailsystem
def test_nsd_reverse_dns_and_forward_confirmation(nsd_report: DnsReport) -> None:
    assert _verdicts(nsd_report, "127.0.0.1") == {DnsCheck.RDNS: True, DnsCheck.FCRDNS: True}
    assert _verdicts(nsd_report, "127.0.0.2") == {DnsCheck.RDNS: False, DnsCheck.FCRDNS: False}
    assert _verdicts(nsd_report, "127.0.0.4") == {DnsCheck.RDNS: True, DnsCheck.FCRDNS: False}
    assert nsd_report.check("127.0.0.4", DnsCheck.FCRDNS).detail == (
        "no PTR name of 127.0.0.4 (mail.bad.test) resolves back to it"
    )


@pytest.mark.mailsystem
def test_nsd_blocklist_listed_unlisted_and_error_answer(nsd_report: DnsReport) -> None:
    listed = {(r.target, r.zone): r.listed for r in nsd_report.blocklists}
    assert listed[("127.0.0.1", DNSBL_ZONE)] is False
    assert listed[("127.0.0.2", DNSBL_ZONE)] is True
    assert listed[("127.0.0.3", DNSBL_ZONE)] is None  # 127.255.255.254: an error, not a listing
    assert listed[(BAD_DOMAIN, DNSBL_ZONE)] is True
    assert listed[(GOOD_DOMAIN, DNSBL_ZONE)] is False
    details = {r.target: r.detail for r in nsd_report.blocklists}
    assert details["127.0.0.2"] == (
        "2.0.0.127.dnsbl.test: listed (127.0.0.2): Listed for testing (RFC 5782 test entry)"
    )
    assert details["127.0.0.3"].startswith("3.0.0.127.dnsbl.test: error answer 127.255.255.254")


@pytest.mark.mailsystem
async def test_nsd_run_from_config_records_metrics(mail_system: MailSystem, tmp_path: Path) -> None:
    dns = {
        "nameservers": [f"127.0.0.1:{mail_system.ports.dns}"],
        "timeout": "10s",
        "blocklists": {"ips": [DNSBL_ZONE], "domains": [DNSBL_ZONE]},
        "dkim_selectors": {GOOD_DOMAIN: ["sel1"]},
    }
    config = _config(tmp_path, dns=dns)
    registry = new_registry()
    recorder = Recorder(registry)
    declare_dns_series(config, recorder)
    report = await run_dns_checks(config)
    assert report is not None
    recorder.record(report)
    assert all(r.passed is not None for r in report.checks)

    def ok(target: str, check: str) -> float | None:
        return _sample(registry, "deliverability_dns_check_ok", target=target, check=check)

    assert ok(GOOD_DOMAIN, "dkim") == 1
    assert ok(BAD_DOMAIN, "spf_authorized") == 0  # bad.test's SPF allows neither 127.0.0.1 nor .2
    assert ok(SEED_DOMAIN, "mx") == 1
    assert ok("127.0.0.1", "fcrdns") == 1
    assert ok("127.0.0.2", "rdns") == 0
    listed = "deliverability_dnsbl_listed"
    assert _sample(registry, listed, target="127.0.0.2", zone=DNSBL_ZONE) == 1
    assert _sample(registry, listed, target="127.0.0.1", zone=DNSBL_ZONE) == 0
    assert _sample(registry, listed, target=BAD_DOMAIN, zone=DNSBL_ZONE) == 1
    assert (
        _sample(
            registry,
            "deliverability_dkim_key_bits",
            domain=GOOD_DOMAIN,
            selector="sel1",
            type="rsa",
        )
        == 2048
    )
    assert _sample(registry, "deliverability_spf_dns_lookups", domain=GOOD_DOMAIN) == 0
    policy = {"adkim": "r", "aspf": "r", "subdomain_policy": "reject"}
    assert (
        _sample(
            registry,
            "deliverability_dmarc_policy_info",
            domain=GOOD_DOMAIN,
            policy="reject",
            **policy,
        )
        == 1
    )
    duration = _sample(registry, "deliverability_dns_check_duration_seconds")
    assert duration is not None and duration > 0
    for check in DnsCheck:
        assert _sample(registry, "deliverability_dns_check_errors_total", check=check) == 0


@pytest.mark.mailsystem
async def test_nsd_unreachable_nameserver_leaves_every_check_undecided(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    (closed,) = free_ports(1)  # nothing listens there
    dns = {"nameservers": [f"127.0.0.1:{closed}"], "timeout": "250ms"}
    config = _config(tmp_path, dns=dns)
    registry = new_registry()
    recorder = Recorder(registry)
    report = await run_dns_checks(config)
    assert report is not None and report.checks
    recorder.record(report)
    assert {r.passed for r in report.checks} == {None}
    # dnspython keeps retrying a refused nameserver until the deadline.
    assert report.check(GOOD_DOMAIN, DnsCheck.SPF).detail == (
        "no answer within the check's timeout (0.25 s)"
    )
    assert _sample(registry, "deliverability_dns_check_errors_total", check="spf") == 2


@pytest.mark.mailsystem
async def test_agent_schedules_dns_checks_at_start_and_on_their_interval(
    mail_system: MailSystem, tmp_path: Path
) -> None:
    dns = {"nameservers": [f"127.0.0.1:{mail_system.ports.dns}"], "interval": "30m"}
    config = _config(tmp_path, dns=dns)
    registry = new_registry()
    agent = Agent(config, recorder=Recorder(registry))
    await agent.start()
    try:
        before = time.time()
        agent.schedule()
        job = next(job for job in agent.scheduled_jobs() if job.id == "dns-checks")
        assert job.trigger.interval.total_seconds() == 1800
        assert job.max_instances == 1
        assert job.next_run_time.timestamp() <= before + 1  # the first run is at start
        await agent.check_dns()
        assert (
            _sample(registry, "deliverability_dns_check_ok", target=GOOD_DOMAIN, check="spf") == 1
        )
    finally:
        await agent.stop()
