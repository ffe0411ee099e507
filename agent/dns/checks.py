"""Run the DNS checks of the sending setup and report them; the service schedules `run_dns_checks`.

What is checked comes from the configuration (`plan_checks`):

* every sending domain (the domains of each route's `from` and envelope sender): SPF (one valid
  record, the whole include tree valid, at most 10 DNS lookups over it), DMARC (record, enforced
  policy, aggregate reports), MTA-STS and TLS-RPT records, and the domain blocklists;
* per domain with routes that list `sending_ips`: whether SPF authorises each of them for the
  route's envelope sender and EHLO name (pyspf's RFC 7208 evaluation, its lookups sent to our
  resolver);
* the DKIM selectors configured per domain: a usable key, its type and size;
* every seed domain: MX hosts that resolve;
* every sending IP: PTR, forward confirmation (FCrDNS), and the IP blocklists.

Each check runs under one deadline (`dns.timeout`); a lookup that fails makes the check undecided
(`passed=None`, counted as an error) rather than failed, so a resolver outage never reads as a
broken record. Parsing and judging records is in `agent.dns.records`; lookups in
`agent.dns.resolver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import spf  # type: ignore[import-untyped]

from agent.dns.records import (
    SPF_LOOKUP_LIMIT,
    BlocklistResult,
    CheckResult,
    DkimKeyResult,
    DmarcFinding,
    DmarcPolicy,
    DnsCheck,
    DnsReport,
    RecordError,
    SpfRecord,
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
from agent.dns.resolver import DnsError, Mx, Resolver, SyncResolver, Value
from agent.model import AuthResult

if TYPE_CHECKING:
    from agent.config import Config
    from agent.monitoring.recorder import Recorder

__all__ = [
    "DnsPlan",
    "SpfSender",
    "declare_dns_series",
    "plan_checks",
    "run_checks",
    "run_dns_checks",
    "spf_verdict",
]

log = logging.getLogger(__name__)

_CONCURRENCY: Final = 8  # checks in flight at once: enough to be quick, few enough to be polite
_SPF_WALK_CAP: Final = 4 * SPF_LOOKUP_LIMIT  # stop following includes past this many lookups
_MAX_PTR_NAMES: Final = 10  # RFC 7208 section 4.6.4 bounds PTR names the same way
_DOMAIN_CHECKS: Final = (
    DnsCheck.SPF,
    DnsCheck.SPF_LOOKUPS,
    DnsCheck.DMARC,
    DnsCheck.DMARC_ENFORCED,
    DnsCheck.DMARC_REPORTING,
    DnsCheck.MTA_STS,
    DnsCheck.TLS_RPT,
)


@dataclass(frozen=True, slots=True)
class SpfSender:
    """One sending IP of a route, as SPF sees it: MAIL FROM, EHLO name and client IP."""

    domain: str  # the envelope sender's domain, whose SPF record applies
    ip: str
    sender: str
    helo: str


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """What one run checks, derived from the configuration."""

    sending_domains: tuple[str, ...] = ()
    seed_domains: tuple[str, ...] = ()
    dkim_selectors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    spf_senders: tuple[SpfSender, ...] = ()
    sending_ips: tuple[str, ...] = ()
    ip_zones: tuple[str, ...] = ()
    domain_zones: tuple[str, ...] = ()

    def check_series(self) -> list[tuple[str, DnsCheck]]:
        """Every (target, check) a run reports on."""
        series = [(domain, check) for domain in self.sending_domains for check in _DOMAIN_CHECKS]
        series += [(domain, DnsCheck.SPF_AUTHORIZED) for domain in self._spf_domains()]
        series += [(domain, DnsCheck.DKIM) for domain, _ in self.dkim_selectors]
        series += [(domain, DnsCheck.MX) for domain in self.seed_domains]
        series += [
            (ip, check) for ip in self.sending_ips for check in (DnsCheck.RDNS, DnsCheck.FCRDNS)
        ]
        return list(dict.fromkeys(series))

    def blocklist_series(self) -> list[tuple[str, str]]:
        """Every (target, zone) a run looks up."""
        series = [(ip, zone) for ip in self.sending_ips for zone in self.ip_zones]
        series += [(domain, zone) for domain in self.sending_domains for zone in self.domain_zones]
        return series

    def _spf_domains(self) -> list[str]:
        return list(dict.fromkeys(sender.domain for sender in self.spf_senders))


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].rstrip(".").lower()


def plan_checks(config: Config) -> DnsPlan | None:
    """The checks the configuration asks for; None when it has no `dns` section."""
    settings = config.dns
    if settings is None:
        return None
    sending: dict[str, None] = {}
    senders: dict[SpfSender, None] = {}
    ips: dict[str, None] = {}
    for route in config.routes:
        # With a bounce mailbox, probes leave with its address (VERP adds +<id>: same domain).
        if route.bounce_mailbox is not None:
            envelope = config.bounce_mailbox(route.bounce_mailbox).address
        else:
            envelope = route.envelope_from or route.from_address
        sending[_domain_of(route.from_address)] = None
        sending[_domain_of(envelope)] = None
        for ip in route.sending_ips:
            ips[ip] = None
            senders[SpfSender(_domain_of(envelope), ip, envelope, route.ehlo_name)] = None
    seeds = dict.fromkeys(_domain_of(mailbox.address) for mailbox in config.mailboxes)
    return DnsPlan(
        sending_domains=tuple(sending),
        seed_domains=tuple(seeds),
        dkim_selectors=tuple(
            (domain, tuple(selectors)) for domain, selectors in settings.dkim_selectors.items()
        ),
        spf_senders=tuple(senders),
        sending_ips=tuple(ips),
        ip_zones=tuple(settings.blocklists.ips),
        domain_zones=tuple(settings.blocklists.domains),
    )


# --- SPF evaluation with pyspf ---------------------------------------------------------------


def _spf_shape(rdtype: str, value: Value) -> Any:
    """One answer in the shape pyspf's own lookup function returns."""
    if rdtype == "TXT":
        return (str(value).encode("utf-8"),)  # pyspf joins a record's strings itself
    if isinstance(value, Mx):
        return (value.preference, value.exchange)
    return value


class _SpfQuery(spf.query):  # type: ignore[misc]
    """pyspf's RFC 7208 evaluation, with its DNS questions sent to our resolver.

    pyspf asks dnspython's process-wide default resolver (no nameserver, no port); overriding
    its one lookup method keeps its evaluation, limits and results untouched while the questions
    go where the configuration says. Runs in a worker thread: pyspf is synchronous.
    """

    def __init__(self, resolver: SyncResolver, *, deadline: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resolver = resolver
        self._deadline = deadline

    def dns(
        self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or any(not 0 < len(label) < 64 for label in name.split(".")):
            return []  # as pyspf: an invalid name has no records
        key = (name, qtype)
        if key not in self.cache:
            if time.monotonic() > self._deadline:
                raise spf.TempError("DNS: the check's deadline passed")
            if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
                return []
            try:
                values = self._resolver.lookup(name, qtype)
            except DnsError as exc:
                raise spf.TempError(f"DNS {exc}") from None
            self.cache[key] = [_spf_shape(qtype, value) for value in values]
        result = list(self.cache[key])  # pyspf sorts MX answers in place
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def spf_verdict(
    resolver: SyncResolver, *, ip: str, sender: str, helo: str, timeout: float
) -> tuple[AuthResult, str]:
    """SPF's result for mail from `sender` sent by `ip` (RFC 7208 check_host), and why. Blocks."""
    query = _SpfQuery(
        resolver,
        deadline=time.monotonic() + timeout,
        i=ip,
        s=sender,
        h=helo,
        timeout=timeout,
    )
    result, _code, explanation = query.check()
    return AuthResult.parse(str(result)), str(explanation)


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SpfTree:
    lookups: int
    problems: tuple[str, ...]
    unexpanded: tuple[str, ...]  # include/redirect targets with macros: not followed


class _Run:
    """One run of every check of a plan, collecting results as the checks finish."""

    def __init__(self, plan: DnsPlan, resolver: Resolver, *, timeout: float) -> None:
        self.plan = plan
        self.resolver = resolver
        self.timeout = timeout
        self.checks: list[CheckResult] = []
        self.blocklists: list[BlocklistResult] = []
        self.dkim_keys: list[DkimKeyResult] = []
        self.dmarc: list[DmarcFinding] = []
        self.spf_lookups: list[tuple[str, int]] = []
        self._limit = asyncio.Semaphore(_CONCURRENCY)

    def add(self, target: str, check: DnsCheck, passed: bool | None, detail: str) -> None:
        self.checks.append(CheckResult(target, check, passed, detail))

    async def run(self) -> None:
        plan = self.plan
        jobs: list[tuple[Sequence[tuple[str, DnsCheck]], Callable[[], Awaitable[None]]]] = []
        for domain in plan.sending_domains:
            jobs.append(
                (_pairs(domain, DnsCheck.SPF, DnsCheck.SPF_LOOKUPS), _bind(self.spf, domain))
            )
            dmarc = (DnsCheck.DMARC, DnsCheck.DMARC_ENFORCED, DnsCheck.DMARC_REPORTING)
            jobs.append((_pairs(domain, *dmarc), _bind(self.dmarc_check, domain)))
            jobs.append((_pairs(domain, DnsCheck.MTA_STS), _bind(self.mta_sts, domain)))
            jobs.append((_pairs(domain, DnsCheck.TLS_RPT), _bind(self.tls_rpt, domain)))
        by_domain: dict[str, list[SpfSender]] = {}
        for sender in plan.spf_senders:
            by_domain.setdefault(sender.domain, []).append(sender)
        for domain, senders in by_domain.items():
            job = _bind(self.spf_authorized, domain, senders)
            jobs.append((_pairs(domain, DnsCheck.SPF_AUTHORIZED), job))
        for domain, selectors in plan.dkim_selectors:
            jobs.append((_pairs(domain, DnsCheck.DKIM), _bind(self.dkim, domain, selectors)))
        for domain in plan.seed_domains:
            jobs.append((_pairs(domain, DnsCheck.MX), _bind(self.mx, domain)))
        for ip in plan.sending_ips:
            jobs.append((_pairs(ip, DnsCheck.RDNS, DnsCheck.FCRDNS), _bind(self.reverse, ip)))
        async with asyncio.TaskGroup() as group:
            for covers, job in jobs:
                group.create_task(self._guarded(covers, job))
            for target, zone in plan.blocklist_series():
                group.create_task(self._guarded_blocklist(target, zone))

    async def _guarded(
        self, covers: Sequence[tuple[str, DnsCheck]], job: Callable[[], Awaitable[None]]
    ) -> None:
        """Run one job under the check deadline; a failure leaves its checks undecided."""
        async with self._limit:
            try:
                async with asyncio.timeout(self.timeout):
                    await job()
                return
            except DnsError as exc:
                why = f"DNS lookup failed: {exc}"
            except TimeoutError:
                why = f"no answer within the check's timeout ({self.timeout:g} s)"
            except Exception as exc:  # a library bug must not take the other checks down
                log.exception("DNS check %s failed unexpectedly", covers[0])
                why = f"internal error: {type(exc).__name__}"
        done = {(result.target, result.check) for result in self.checks}
        for target, check in covers:
            if (target, check) not in done:
                self.add(target, check, None, why)

    async def _guarded_blocklist(self, target: str, zone: str) -> None:
        async with self._limit:
            try:
                async with asyncio.timeout(self.timeout):
                    result = await self.blocklist(target, zone)
            except DnsError as exc:
                result = BlocklistResult(target, zone, None, f"DNS lookup failed: {exc}")
            except TimeoutError:
                result = BlocklistResult(target, zone, None, "no answer within the timeout")
            except Exception as exc:  # a bug must not take the other checks down
                log.exception("blocklist lookup of %s on %s failed unexpectedly", target, zone)
                result = BlocklistResult(
                    target, zone, None, f"internal error: {type(exc).__name__}"
                )
        self.blocklists.append(result)

    # --- SPF -------------------------------------------------------------------------------------

    async def spf(self, domain: str) -> None:
        records = select_spf(await self.resolver.txt(domain))
        if len(records) != 1:
            why = (
                f"no SPF record (TXT v=spf1) at {domain}"
                if not records
                else f"{len(records)} SPF records at {domain}: receivers need exactly one "
                "(permerror)"
            )
            self.add(domain, DnsCheck.SPF, False, why)
            self.add(domain, DnsCheck.SPF_LOOKUPS, False, why)
            return
        try:
            record = parse_spf(records[0])
        except RecordError as exc:
            self.add(domain, DnsCheck.SPF, False, f"{exc} in {records[0]!r}")
            self.add(domain, DnsCheck.SPF_LOOKUPS, False, "the SPF record is invalid")
            return
        tree = await self._spf_tree(domain, record)
        self.spf_lookups.append((domain, tree.lookups))
        if tree.problems:
            self.add(domain, DnsCheck.SPF, False, "; ".join(tree.problems))
        else:
            self.add(domain, DnsCheck.SPF, True, records[0])
        note = f"; not followed (macros): {', '.join(tree.unexpanded)}" if tree.unexpanded else ""
        self.add(
            domain,
            DnsCheck.SPF_LOOKUPS,
            tree.lookups <= SPF_LOOKUP_LIMIT,
            f"{tree.lookups} DNS lookups over the include tree (limit {SPF_LOOKUP_LIMIT}){note}",
        )

    async def _spf_tree(self, domain: str, record: SpfRecord) -> _SpfTree:
        """Count the DNS-querying terms of the record and every record it includes or redirects
        to, as an evaluation that reaches every term would (RFC 7208 section 4.6.4)."""
        lookups = 0
        problems: list[str] = []
        unexpanded: list[str] = []

        async def walk(record: SpfRecord, chain: tuple[str, ...]) -> None:
            nonlocal lookups
            lookups += record.lookups
            targets = [*record.includes, *filter(None, [record.redirect])]
            for target in targets:
                if lookups > _SPF_WALK_CAP:
                    return
                if "%{" in target:
                    unexpanded.append(target)
                    continue
                name = target.rstrip(".").lower()
                if name in chain:
                    problems.append(f"SPF loop: {' -> '.join((*chain, name))}")
                    continue
                found = select_spf(await self.resolver.txt(name))
                if len(found) != 1:
                    count = "no" if not found else str(len(found))
                    problems.append(f"{name} (included) has {count} SPF records (permerror)")
                    continue
                try:
                    included = parse_spf(found[0])
                except RecordError as exc:
                    problems.append(f"{name} (included): {exc}")
                    continue
                await walk(included, (*chain, name))

        await walk(record, (domain,))
        return _SpfTree(lookups, tuple(problems), tuple(unexpanded))

    async def spf_authorized(self, domain: str, senders: Sequence[SpfSender]) -> None:
        sync = self.resolver.sync()
        verdicts: list[tuple[SpfSender, AuthResult, str]] = []
        for sender in senders:
            result, why = await asyncio.to_thread(
                spf_verdict,
                sync,
                ip=sender.ip,
                sender=sender.sender,
                helo=sender.helo,
                timeout=self.timeout,
            )
            verdicts.append((sender, result, why))
        detail = "; ".join(
            f"{s.ip}: {r}" + ("" if r is AuthResult.PASS else f" ({why})") for s, r, why in verdicts
        )
        results = {result for _, result, _ in verdicts}
        passed: bool | None = results == {AuthResult.PASS}
        if not passed and results <= {AuthResult.PASS, AuthResult.TEMPERROR}:
            passed = None  # only temporary errors: undecided, not unauthorised
        self.add(domain, DnsCheck.SPF_AUTHORIZED, passed, detail)

    # --- DKIM, DMARC, MTA-STS, TLS-RPT -------------------------------------------------------

    async def dkim(self, domain: str, selectors: Sequence[str]) -> None:
        problems: list[str] = []
        found: list[str] = []
        for selector in selectors:
            name = f"{selector}._domainkey.{domain}"
            txts = await self.resolver.txt(name)
            key = None
            if not txts:
                problems.append(f"{name}: no key published")
            elif len(txts) > 1:
                problems.append(f"{name}: {len(txts)} TXT records (verifiers may pick any one)")
            else:
                try:
                    key = parse_dkim_key(txts[0], name=name)
                except RecordError as exc:
                    problems.append(str(exc))
                else:
                    problem = dkim_key_problem(key)
                    if problem is not None:
                        problems.append(f"{name}: {problem}")
                    found.append(f"{name}: {key.key_type} {key.bits} bits")
            self.dkim_keys.append(DkimKeyResult(domain, selector, key))
        self.add(domain, DnsCheck.DKIM, not problems, "; ".join(problems or found))

    async def dmarc_check(self, domain: str) -> None:
        checks = (DnsCheck.DMARC, DnsCheck.DMARC_ENFORCED, DnsCheck.DMARC_REPORTING)
        for name in dmarc_names(domain):
            records = select_dmarc(await self.resolver.txt(name))
            if not records:
                continue
            if len(records) > 1:
                why = f"{len(records)} DMARC records at {name}: receivers apply none"
                for check in checks:
                    self.add(domain, check, False, why)
                return
            try:
                record = parse_dmarc(records[0])
            except RecordError as exc:
                for check in checks:
                    self.add(domain, check, False, f"{exc} at {name}")
                return
            finding = DmarcFinding(domain, name.removeprefix("_dmarc."), record)
            self.dmarc.append(finding)
            where = "" if finding.found_at == domain else f" (from {name})"
            self.add(domain, DnsCheck.DMARC, True, records[0] + where)
            pct = f", pct={record.pct}" if record.pct != 100 else ""
            self.add(
                domain,
                DnsCheck.DMARC_ENFORCED,
                finding.policy is not DmarcPolicy.NONE,
                f"policy {finding.policy}{pct}{where}",
            )
            reporting = bool(record.rua) and not record.bad_uris
            detail = f"rua={','.join(record.rua) or '-'} ruf={','.join(record.ruf) or '-'}"
            if record.bad_uris:
                detail += f"; malformed report URIs: {', '.join(record.bad_uris)}"
            self.add(domain, DnsCheck.DMARC_REPORTING, reporting, detail)
            return
        why = f"no DMARC record at _dmarc.{domain} or its parents"
        for check in checks:
            self.add(domain, check, False, why)

    async def mta_sts(self, domain: str) -> None:
        name = f"_mta-sts.{domain}"
        records = select_mta_sts(await self.resolver.txt(name))
        self._versioned(domain, DnsCheck.MTA_STS, name, records, parse_mta_sts)

    async def tls_rpt(self, domain: str) -> None:
        name = f"_smtp._tls.{domain}"
        records = select_tls_rpt(await self.resolver.txt(name))
        self._versioned(domain, DnsCheck.TLS_RPT, name, records, parse_tls_rpt)

    def _versioned(
        self,
        domain: str,
        check: DnsCheck,
        name: str,
        records: Sequence[str],
        parse: Callable[[str], object],
    ) -> None:
        if len(records) != 1:
            what = "no record" if not records else f"{len(records)} records (receivers use none)"
            self.add(domain, check, False, f"{what} at {name}")
            return
        try:
            parse(records[0])
        except RecordError as exc:
            self.add(domain, check, False, f"{exc} at {name}")
            return
        self.add(domain, check, True, records[0])

    # --- MX, reverse DNS, blocklists ---------------------------------------------------------

    async def mx(self, domain: str) -> None:
        records = await self.resolver.mx(domain)
        if not records:
            self.add(domain, DnsCheck.MX, False, f"no MX record at {domain}")
            return
        if any(record.exchange == "" for record in records):
            self.add(domain, DnsCheck.MX, False, f"null MX at {domain}: it accepts no mail")
            return
        shown: list[str] = []
        resolving = 0
        for record in records:
            addresses = await self.resolver.addresses(record.exchange)
            resolving += bool(addresses)
            where = ", ".join(addresses) if addresses else "no address"
            shown.append(f"{record.preference} {record.exchange} ({where})")
        self.add(domain, DnsCheck.MX, resolving > 0, "; ".join(shown))

    async def reverse(self, ip: str) -> None:
        names = await self.resolver.ptr(ip)
        if not names:
            self.add(ip, DnsCheck.RDNS, False, f"no PTR record for {ip}")
            self.add(ip, DnsCheck.FCRDNS, False, f"no PTR record for {ip}")
            return
        self.add(ip, DnsCheck.RDNS, True, ", ".join(names))
        confirmed = []
        for name in names[:_MAX_PTR_NAMES]:
            if any(same_address(ip, address) for address in await self.resolver.addresses(name)):
                confirmed.append(name)
        detail = (
            f"{', '.join(confirmed)} resolves back to {ip}"
            if confirmed
            else f"no PTR name of {ip} ({', '.join(names)}) resolves back to it"
        )
        self.add(ip, DnsCheck.FCRDNS, bool(confirmed), detail)

    async def blocklist(self, target: str, zone: str) -> BlocklistResult:
        name = blocklist_query_name(target, zone)
        answer = classify_blocklist_answer(await self.resolver.a(name))
        if answer.listed is None:
            return BlocklistResult(target, zone, None, f"{name}: {answer.error}")
        if not answer.listed:
            return BlocklistResult(target, zone, False, f"{name}: not listed")
        reason = ""
        with contextlib.suppress(DnsError):  # the reason is a courtesy; the A record decides
            reason = "; ".join(await self.resolver.txt(name))[:200]
        codes = ", ".join(answer.codes)
        return BlocklistResult(
            target, zone, True, f"{name}: listed ({codes})" + (f": {reason}" if reason else "")
        )


def _pairs(target: str, *checks: DnsCheck) -> list[tuple[str, DnsCheck]]:
    return [(target, check) for check in checks]


def _bind(function: Callable[..., Awaitable[None]], *args: Any) -> Callable[[], Awaitable[None]]:
    return lambda: function(*args)


async def run_checks(
    plan: DnsPlan,
    resolver: Resolver,
    *,
    check_timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> DnsReport:
    """Run every check of `plan` concurrently, each under `check_timeout` (all its lookups
    included), and report what was found."""
    started = clock()
    run = _Run(plan, resolver, timeout=check_timeout)
    await run.run()
    order = {series: index for index, series in enumerate(plan.check_series())}
    return DnsReport(
        checks=tuple(sorted(run.checks, key=lambda r: order.get((r.target, r.check), len(order)))),
        blocklists=tuple(sorted(run.blocklists, key=lambda r: (r.target, r.zone))),
        dkim_keys=tuple(run.dkim_keys),
        dmarc=tuple(sorted(run.dmarc, key=lambda finding: finding.domain)),
        spf_lookups=tuple(sorted(run.spf_lookups)),
        duration_seconds=max(clock() - started, 0.0),
    )


# --- what the service calls --------------------------------------------------------------------


def declare_dns_series(config: Config, recorder: Recorder) -> None:
    """Pre-create the DNS series of `config` (none without a `dns` section) and drop stale ones."""
    plan = plan_checks(config)
    if plan is None:
        recorder.declare_dns((), ())
    else:
        recorder.declare_dns(plan.check_series(), plan.blocklist_series())


async def run_dns_checks(config: Config) -> DnsReport | None:
    """One run of the configured DNS checks, logged; None without `dns`. The caller hands the
    report to the recorder, like every other result."""
    plan = plan_checks(config)
    if plan is None or config.dns is None:
        return None
    settings = config.dns
    resolver = Resolver(
        nameservers=[(ns.host, ns.port) for ns in settings.nameservers], timeout=settings.timeout
    )
    report = await run_checks(plan, resolver, check_timeout=settings.timeout)
    _log_report(report)
    return report


def _log_report(report: DnsReport) -> None:
    failed = [r for r in report.checks if r.passed is False]
    undecided = [r for r in report.checks if r.passed is None]
    for result in failed:
        log.warning("DNS check %s of %s failed: %s", result.check, result.target, result.detail)
    for result in undecided:
        log.warning("DNS check %s of %s undecided: %s", result.check, result.target, result.detail)
    for listing in report.blocklists:
        if listing.listed is not False:
            state = "listed" if listing.listed else "blocklist error"
            log.warning("%s on %s: %s", state, listing.zone, listing.detail)
    log.info(
        "DNS checks: %d passed, %d failed, %d undecided; %d blocklist listing(s) in %.2f s",
        len(report.checks) - len(failed) - len(undecided),
        len(failed),
        len(undecided),
        sum(1 for listing in report.blocklists if listing.listed),
        report.duration_seconds,
    )
