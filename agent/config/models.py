"""The configuration's sections and the whole `Config`.

Routes (SMTP submission), seed and bounce mailboxes (IMAP), probing, the HTTP server and the DNS
checks; the sandbox section has its own module. Each section is a frozen pydantic model that
refuses unknown keys; defaults derived from other keys are filled in before validation, and
checks across keys and sections run after it, so every problem is reported at once.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from agent.config.base import _Model
from agent.config.credentials import Auth, MailAuth
from agent.config.errors import _invalid, _Problems
from agent.config.esp import Esp
from agent.config.interpolation import _PLACEHOLDER, _fail_closed, _read_secret_file
from agent.config.reputation import Reputation
from agent.config.sandbox import Sandbox
from agent.config.scalars import (
    _DNS_NAME_RE,
    AddrSpec,
    Cleanup,
    ConfigPath,
    DnsName,
    ExistingFile,
    HeaderAddress,
    Host,
    IpAddress,
    ListenAddress,
    LogLevel,
    Name,
    Nameserver,
    Port,
    PositiveDuration,
    Provider,
    StartMode,
    Text,
    TrustRuleText,
    Word,
    _duration,
    _header_addr_spec,
    _listen,
    _nameserver,
    _port,
    format_duration,
    parse_duration,
)
from agent.model import TlsMode
from agent.providers import PROFILES, Endpoint, canonical_provider, trust_rules_for
from agent.reading.probe_token import VERP_LOCAL_PART_MAX, verp_address
from agent.secrets import Secret

__all__ = [
    "Blocklists",
    "Config",
    "Dns",
    "Folders",
    "Http",
    "HttpTls",
    "ImapTimeouts",
    "Mailbox",
    "PairRef",
    "Probes",
    "ReportMailbox",
    "Route",
    "Timeouts",
]


# --- routes, mailboxes and probes -------------------------------------------------------------


class Timeouts(_Model):
    """Library backstops and the one deadline over a whole SMTP transaction."""

    connect: PositiveDuration = 10.0
    stage: PositiveDuration = 30.0  # per SMTP command/reply
    total: PositiveDuration = 120.0  # the whole transaction, enforced with asyncio.timeout

    def _check(self, problems: _Problems) -> None:
        for key in ("connect", "stage"):
            value: float = getattr(self, key)
            if value > self.total:
                problems.add(
                    (key,),
                    f"expected at most the total timeout ({format_duration(self.total)})",
                    got=format_duration(value),
                )


def _plaintext_auth_problem(tls: TlsMode, auth: MailAuth) -> str | None:
    # An access token is as good as a password to whoever reads it off the wire.
    what = "the access token" if auth.uses_token else "the password"
    if tls is TlsMode.NONE:
        return (
            f"refusing to send {what} in clear text over tls: none; use TLS, or set "
            "allow_plaintext_auth: true if the network path is trusted"
        )
    if tls is TlsMode.OPPORTUNISTIC:
        return (
            f"refusing auth over tls: opportunistic, which sends {what} in clear text when "
            "STARTTLS is not offered; use starttls, or set allow_plaintext_auth: true"
        )
    return None


def _tls_default(data: dict[str, Any], by_port: Mapping[int, TlsMode], default_port: int) -> None:
    if "tls" in data:
        return
    try:
        port = _port(data.get("port", default_port))
    except PydanticCustomError:
        return  # the port field reports it; the field default stands in meanwhile
    data["tls"] = by_port.get(port, by_port[default_port])


_PLACEHOLDER_HOST: Final = "unresolved.invalid"  # stands in while a problem is already reported


def _apply_profile(data: dict[str, Any], problems: _Problems, *, imap: bool) -> None:
    """Fill `host`, `port` and `tls` from the provider's profile (IMAP for a mailbox, SMTP
    submission for a route) where the keys are not given, and `auth.oauth2.provider` from its
    OAuth preset."""
    raw = data.get("provider", "other")
    try:
        name = canonical_provider(raw) if isinstance(raw, str) else None
    except ValueError:
        name = None
    if name is None:  # the provider field reports it; a missing host would only be its echo
        data.setdefault("host", _PLACEHOLDER_HOST)
        return
    profile = PROFILES[name]
    endpoint: Endpoint | None = profile.imap if imap else profile.smtp
    if endpoint is not None:
        data.setdefault("host", endpoint.host)
        if "port" not in data and "tls" not in data:
            data["port"], data["tls"] = endpoint.port, endpoint.tls.value
    elif "host" not in data:
        if "provider" in data:
            problems.add(("host",), f"missing required key (provider {name} has no known servers)")
        else:
            known = ", ".join(n for n, p in PROFILES.items() if (p.imap if imap else p.smtp))
            problems.add(
                ("host",), f"missing required key (or a provider whose servers are known: {known})"
            )
        data["host"] = _PLACEHOLDER_HOST
    # The OAuth preset (token URL, default scopes) of the provider, unless the section names
    # one or its own token_url. Only the raw key is set: auth.oauth2 validates it.
    auth = data.get("auth")
    if profile.oauth is not None and isinstance(auth, Mapping):
        oauth2 = auth.get("oauth2")
        if isinstance(oauth2, Mapping) and not {"provider", "token_url"} & oauth2.keys():
            data["auth"] = {**auth, "oauth2": {**oauth2, "provider": profile.oauth}}


_SMTP_TLS_BY_PORT: Final = {
    25: TlsMode.OPPORTUNISTIC,
    465: TlsMode.IMPLICIT,
    587: TlsMode.STARTTLS,
    2525: TlsMode.STARTTLS,
}


class Route(_Model):
    """One way of sending probes: an SMTP submission server or relay, and the sender identity."""

    name: Name
    # A profile of agent.providers: fills host, port and tls (its SMTP submission server).
    provider: Provider = "other"
    host: Host
    port: Port = 587
    tls: TlsMode = TlsMode.STARTTLS  # default derived from the port in _prepare
    tls_verify: bool = True
    ca_file: ExistingFile | None = None
    auth: MailAuth | None = None
    allow_plaintext_auth: bool = False
    from_: HeaderAddress = Field(alias="from")
    envelope_from: AddrSpec = ""  # default: the address in `from`, filled in by _prepare
    ehlo_name: Word = ""  # default: socket.getfqdn(), filled in by _prepare
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # Bounces come back to this bounce mailbox's address (the envelope sender of every probe),
    # with the probe id and its VERP tag in it as user+<probe-id>-<tag>@domain when verp is on.
    bounce_mailbox: Name | None = None
    verp: bool = True
    sending_ips: tuple[IpAddress, ...] = ()  # the IPs mail leaves from, for the DNS checks
    esp: Esp | None = None  # the route is an ESP's relay: its event webhook (off when None)

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        _apply_profile(data, problems, imap=False)
        _tls_default(data, _SMTP_TLS_BY_PORT, 587)
        if "envelope_from" in data and "bounce_mailbox" in data:
            problems.add(
                ("envelope_from",),
                "expected either envelope_from or bounce_mailbox, not both (with a bounce "
                "mailbox, probes are sent from its address)",
            )
        if "envelope_from" not in data and isinstance(data.get("from"), str):
            addr = _header_addr_spec(data["from"])
            if addr is not None:
                data["envelope_from"] = addr
        if "ehlo_name" not in data:
            data["ehlo_name"] = socket.getfqdn()

    def _check(self, problems: _Problems) -> None:
        if self.auth is not None and not self.allow_plaintext_auth:
            problem = _plaintext_auth_problem(self.tls, self.auth)
            if problem is not None:
                problems.add(("auth",), problem)

    @property
    def from_address(self) -> str:
        """The bare address in the From header."""
        addr = _header_addr_spec(self.from_)
        assert addr is not None  # validated
        return addr


def _imap_tls(value: Any) -> TlsMode:
    # No opportunistic mode: it would send the password in clear text to a server without STARTTLS.
    if value in (TlsMode.IMPLICIT, TlsMode.STARTTLS, TlsMode.NONE):
        return TlsMode(value)
    raise _invalid("expected 'implicit', 'starttls' or 'none'")


_IMAP_TLS_BY_PORT: Final = {993: TlsMode.IMPLICIT, 143: TlsMode.STARTTLS}


class ImapTimeouts(_Model):
    """Bounds on a mailbox watcher's IMAP connection: a server that misses one is down."""

    connect: PositiveDuration = 15.0  # TCP connect, greeting, CAPABILITY, TLS (STARTTLS too)
    command: PositiveDuration = 30.0  # each command's answer, DONE (the end of IDLE) included


class Folders(_Model):
    """The seed mailbox folders a watcher reads."""

    inbox: Text = "INBOX"
    junk: Text | None = None  # None: found at run time (SPECIAL-USE \\Junk, then known names)
    extra: tuple[Text, ...] = ()

    def _check(self, problems: _Problems) -> None:
        seen = {self.inbox: "inbox"}
        if self.junk is not None:
            if self.junk == self.inbox:
                problems.add(("junk",), "expected a folder other than inbox", got=self.junk)
            seen.setdefault(self.junk, "junk")
        for index, folder in enumerate(self.extra):
            if folder in seen:
                problems.add(
                    ("extra", index),
                    f"expected a folder not already watched as {seen[folder]}",
                    got=folder,
                )
            seen.setdefault(folder, f"extra[{index}]")


class Mailbox(_Model):
    """One seed IMAP mailbox that probes are sent to and read back from."""

    name: Name
    # A profile of agent.providers: fills host, port and tls (its IMAP server), the OAuth preset
    # and the Authentication-Results trust rules; the `provider` label of mailbox_info.
    provider: Provider = "other"
    host: Host
    port: Port = 993
    tls: Annotated[TlsMode, BeforeValidator(_imap_tls)] = TlsMode.IMPLICIT  # from port: _prepare
    tls_verify: bool = True
    ca_file: ExistingFile | None = None
    auth: MailAuth
    allow_plaintext_auth: bool = False
    address: AddrSpec
    folders: Folders = Field(default_factory=Folders)
    # Authentication-Results trust rules (agent.providers); empty: the provider's profile.
    trusted_authserv_ids: tuple[TrustRuleText, ...] = ()
    timeouts: ImapTimeouts = Field(default_factory=ImapTimeouts)
    # How long a watcher waits in IDLE for a push before it checks the folder itself (NOOP, UID
    # SEARCH). 1 min: a server whose push is slow or absent (Cyrus without idled notifies once a
    # minute, Gmail is known to stall IDLE) delays a probe by at most a minute, a tenth of the
    # default deadline; a server that stopped answering is noticed within a minute plus the
    # command timeout, well inside the 10 min of DeliverabilityImapMailboxUnreachable's `for:`;
    # and three short commands a minute per folder cost the server next to nothing. At least 1 s
    # (no busy loop); at most 29 min, as servers may end an IDLE after 30 (RFC 2177).
    idle_check_interval: Annotated[float, _duration(minimum=1.0, maximum=29 * 60.0)] = 60.0
    # Measure each watched folder's IDLE notification delay (a marker APPENDed and deleted at
    # every connect and hourly) and take it off the latency. On by default: the seed mailbox is
    # the agent's own account, whose owner may insert into its folders on every server we know
    # (RFC 4314), and the agent already deletes there; a refusal costs only the calibration.
    calibrate: bool = True

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        _apply_profile(data, problems, imap=True)
        _tls_default(data, _IMAP_TLS_BY_PORT, 993)

    @property
    def trust_rules(self) -> tuple[str, ...]:
        """The Authentication-Results trust rules in force: `trusted_authserv_ids` when given,
        else the provider's profile (agent.providers), else `topmost`."""
        return tuple(
            str(rule) for rule in trust_rules_for(self.provider, self.trusted_authserv_ids)
        )

    def _check(self, problems: _Problems) -> None:
        if not self.allow_plaintext_auth:
            problem = _plaintext_auth_problem(self.tls, self.auth)
            if problem is not None:
                problems.add(("auth",), problem)


_Limit = Annotated[int, Field(ge=1, le=1000)]


class ReportMailbox(Mailbox):
    """A mailbox that receives DMARC aggregate (rua) and SMTP TLS (TLSRPT rua) reports: read,
    counted as metrics (agent.reports), never probed."""

    # Each bound keeps the values with the most messages (or sessions) so far, the rest `other`:
    # how many source IPs, reporting organisations and domains get a label of their own.
    top_sources: _Limit = 20
    max_orgs: _Limit = 20
    max_domains: _Limit = 20
    cleanup: Cleanup = Cleanup.KEEP  # keep a read report in the mailbox, or delete it


class PairRef(_Model):
    """One route -> mailbox combination to probe."""

    route: Name
    mailbox: Name


_DEFAULT_INTERVAL: Final = 300.0


class Probes(_Model):
    """How often probes are sent, how long they may take to arrive, and what is probed."""

    interval: Annotated[float, _duration(minimum=10.0)] = _DEFAULT_INTERVAL
    jitter: Annotated[float, _duration()] = _DEFAULT_INTERVAL / 10  # default: 10% of interval
    start: StartMode = StartMode.SPREAD
    deadline: PositiveDuration = 600.0
    cleanup: Cleanup = Cleanup.DELETE
    pairs: tuple[PairRef, ...] | None = None  # None: every route to every mailbox
    # Finished probes older than this are deleted from the ledger; probes in flight never are.
    retention: Annotated[float, _duration(minimum=3600.0)] = 30 * 86400.0

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "jitter" not in data:
            with contextlib.suppress(ValueError):  # the interval field reports it
                data["jitter"] = parse_duration(data.get("interval", _DEFAULT_INTERVAL)) / 10
        if data.get("pairs") == []:
            problems.add(
                ("pairs",),
                "expected at least one pair (leave pairs out to probe every route to every "
                "mailbox)",
            )

    def _check(self, problems: _Problems) -> None:
        if self.jitter >= self.interval:
            problems.add(
                ("jitter",),
                f"expected less than the interval ({format_duration(self.interval)})",
                got=format_duration(self.jitter),
            )


# --- the agent's HTTP server ---------------------------------------------------------------------


class HttpTls(_Model):
    """Serve the HTTP endpoints over TLS with this certificate chain and key (PEM)."""

    cert_file: ExistingFile
    key_file: ExistingFile


class Http(_Model):
    """Protection of the status page and /metrics; /healthz and /readyz always stay open."""

    basic_auth: Auth | None = None
    tls: HttpTls | None = None
    status_page: bool = True


# --- DNS checks ----------------------------------------------------------------------------------


class Blocklists(_Model):
    """DNS blocklist zones: `ips` are asked about each sending IP, `domains` about each domain."""

    ips: tuple[DnsName, ...] = ()
    domains: tuple[DnsName, ...] = ()


class Dns(_Model):
    """DNS checks of the sending setup: SPF, DKIM, DMARC, MX, MTA-STS, TLS-RPT, rDNS, blocklists."""

    nameservers: tuple[
        Annotated[Nameserver, PlainValidator(_nameserver), PlainSerializer(str)], ...
    ] = ()  # empty: the system's resolver
    interval: Annotated[float, _duration(minimum=60.0)] = 3600.0
    timeout: PositiveDuration = 10.0  # one check, all of its lookups included
    blocklists: Blocklists = Field(default_factory=Blocklists)
    dkim_selectors: dict[DnsName, Annotated[tuple[DnsName, ...], Field(min_length=1)]] = Field(
        default_factory=dict
    )

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        selectors = data.get("dkim_selectors")
        if isinstance(selectors, Mapping):
            # Checked here so the problem names the key itself, not pydantic's "[key]".
            good = {key for key in selectors if _DNS_NAME_RE.fullmatch(str(key).removesuffix("."))}
            for key in selectors:
                if key not in good:
                    problems.add(
                        ("dkim_selectors", key), "expected a domain name such as example.com as key"
                    )
            data["dkim_selectors"] = {k: v for k, v in selectors.items() if k in good}

    def _check(self, problems: _Problems) -> None:
        if self.timeout >= self.interval:
            problems.add(
                ("timeout",),
                f"expected less than the interval ({format_duration(self.interval)})",
                got=format_duration(self.timeout),
            )


# --- the whole configuration ---------------------------------------------------------------------

_SECRET_MIN: Final = 16  # characters, for the HMAC secret


def _duplicates(items: Any, kind: str, section: str, problems: _Problems) -> None:
    if not isinstance(items, list):
        return
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in first:
            problems.add(
                (section, index, "name"),
                f"expected a unique {kind} name (also used by {section}[{first[name]}])",
                got=name,
            )
        else:
            first[name] = index


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    names = (i.get("name") for i in items if isinstance(i, Mapping))
    return list(dict.fromkeys(name for name in names if isinstance(name, str)))


class Config(_Model):
    """The whole agent configuration."""

    listen: Annotated[ListenAddress, PlainValidator(_listen), PlainSerializer(str)] = ListenAddress(
        "127.0.0.1", 9465
    )
    state_dir: ConfigPath = Field(default=Path("state"), validate_default=True)
    secret: Secret  # HMAC key for probe tokens; read from secret_file when that is set
    secret_file: Path | None = None
    log_level: LogLevel = LogLevel.INFO
    routes: tuple[Route, ...]  # non-empty: checked in _prepare
    mailboxes: tuple[Mailbox, ...]  # non-empty: checked in _prepare
    probes: Probes = Field(default_factory=Probes)
    # Mailboxes that receive bounces (DSNs) for routes' probes; never probed as seeds.
    bounce_mailboxes: tuple[Mailbox, ...] = ()
    # Mailboxes that receive DMARC aggregate and SMTP TLS reports; never probed.
    report_mailboxes: tuple[ReportMailbox, ...] = ()
    sandbox: Sandbox | None = None  # a local demo mail provider, started by the agent
    http: Http = Field(default_factory=Http)
    dns: Dns | None = None  # DNS checks of the sending setup; None: no DNS checks
    # Gmail Postmaster Tools and Microsoft SNDS; None: neither (agent.reputation)
    reputation: Reputation | None = None

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "secret" in data and "secret_file" in data:
            problems.add(("secret_file",), "expected either secret or secret_file, not both")
            del data["secret_file"]
        elif "secret_file" in data:
            _read_secret_file(data, problems, base_dir, value_key="secret", file_key="secret_file")
            secret = data["secret"]
            if secret != _PLACEHOLDER and len(secret) < _SECRET_MIN:
                problems.add(
                    ("secret_file",), f"expected a file holding at least {_SECRET_MIN} characters"
                )
        elif "secret" not in data:
            problems.add(("secret",), "missing required key (or set secret_file)")
            data["secret"] = _PLACEHOLDER
        elif isinstance(data["secret"], str) and len(data["secret"]) < _SECRET_MIN:
            problems.add(("secret",), f"expected at least {_SECRET_MIN} characters")
        # Checked on the raw lists: a length check after validation would also fire when every
        # item is merely invalid.
        for key, kind in (("routes", "route"), ("mailboxes", "mailbox")):
            if data.get(key) in ([], ()):
                problems.add((key,), f"expected a list of at least one {kind}")
            _duplicates(data.get(key), kind, key, problems)
        _check_bounce_mailboxes(data, problems)
        _check_report_mailboxes(data, problems)
        probes = data.get("probes")
        if isinstance(probes, Mapping):
            _check_pairs(
                probes.get("pairs"),
                _names(data.get("routes")),
                _names(data.get("mailboxes")),
                problems,
            )

    def _check(self, problems: _Problems) -> None:
        _fail_closed(self.secret, "secret", problems)

    def pairs(self) -> list[tuple[Route, Mailbox]]:
        """Every (route, mailbox) to probe: probes.pairs in order, or every route x mailbox."""
        if self.probes.pairs is None:
            return [(route, mailbox) for route in self.routes for mailbox in self.mailboxes]
        return [(self.route(p.route), self.mailbox(p.mailbox)) for p in self.probes.pairs]

    def route(self, name: str) -> Route:
        """The route called `name`; KeyError if there is none."""
        for route in self.routes:
            if route.name == name:
                return route
        raise KeyError(name)

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox called `name`; KeyError if there is none."""
        for mailbox in self.mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)

    def report_mailbox(self, name: str) -> ReportMailbox:
        """The report mailbox called `name`; KeyError if there is none."""
        for mailbox in self.report_mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)

    def bounce_mailbox(self, name: str) -> Mailbox:
        """The bounce mailbox called `name`; KeyError if there is none."""
        for mailbox in self.bounce_mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)

    def envelope_from(self, route: Route, probe_id: str) -> str:
        """The envelope sender of a probe: on the route's bounce mailbox, if it has one, with the
        probe id and its VERP tag (a MAC that proves a bounce is about this probe) when verp is
        on."""
        if route.bounce_mailbox is None:
            return route.envelope_from
        address = self.bounce_mailbox(route.bounce_mailbox).address
        if not route.verp:
            return address
        return verp_address(address, probe_id, self.secret.get_secret_value().encode())


def _check_bounce_mailboxes(data: Mapping[str, Any], problems: _Problems) -> None:
    """Bounce mailboxes: unique names, none shared with a seed mailbox, every reference known."""
    bounce = data.get("bounce_mailboxes")
    _duplicates(bounce, "bounce mailbox", "bounce_mailboxes", problems)
    seeds = set(_names(data.get("mailboxes")))
    known = _names(bounce)
    for index, name in enumerate(known if isinstance(bounce, list) else []):
        if name in seeds:
            problems.add(
                ("bounce_mailboxes", index, "name"),
                "expected a name no seed mailbox uses (a bounce mailbox is not probed)",
                got=name,
            )
    addresses = {
        entry.get("name"): entry.get("address")
        for entry in (bounce if isinstance(bounce, list) else [])
        if isinstance(entry, Mapping)
    }
    routes = data.get("routes")
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        wanted = route.get("bounce_mailbox") if isinstance(route, Mapping) else None
        if isinstance(wanted, str) and wanted not in known:
            problems.add(
                ("routes", index, "bounce_mailbox"),
                f"expected the name of a configured bounce mailbox ({', '.join(known) or 'none'})",
                got=wanted,
            )
            continue
        address = addresses.get(wanted)
        verp = route.get("verp", True) if isinstance(route, Mapping) else True
        if verp is True and isinstance(address, str) and "@" in address:
            local = address.rsplit("@", 1)[0]
            if len(local) > VERP_LOCAL_PART_MAX:
                problems.add(
                    ("routes", index, "bounce_mailbox"),
                    f"expected a bounce mailbox whose address has a local part of at most "
                    f"{VERP_LOCAL_PART_MAX} characters, because VERP adds the probe id and its "
                    "tag and RFC 5321 allows 64 (or set verp: false)",
                    got=f"{wanted} ({local!r} has {len(local)})",
                )


def _check_report_mailboxes(data: Mapping[str, Any], problems: _Problems) -> None:
    """Report mailboxes: unique names, none shared with a seed or bounce mailbox."""
    reports = data.get("report_mailboxes")
    _duplicates(reports, "report mailbox", "report_mailboxes", problems)
    others = {
        **{name: "bounce mailbox" for name in _names(data.get("bounce_mailboxes"))},
        **{name: "seed mailbox" for name in _names(data.get("mailboxes"))},
    }
    for index, entry in enumerate(reports if isinstance(reports, list) else []):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name in others:
            problems.add(
                ("report_mailboxes", index, "name"),
                f"expected a name no other mailbox uses (a {others[name]} has it)",
                got=name,
            )


def _check_pairs(pairs: Any, routes: list[str], mailboxes: list[str], problems: _Problems) -> None:
    if not isinstance(pairs, list):
        return
    seen: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(pairs):
        if not isinstance(pair, Mapping):
            continue
        route, mailbox = pair.get("route"), pair.get("mailbox")
        for key, value, known in (("route", route, routes), ("mailbox", mailbox, mailboxes)):
            if isinstance(value, str) and value not in known:
                problems.add(
                    ("probes", "pairs", index, key),
                    f"expected the name of a configured {key} ({', '.join(known) or 'none'})",
                    got=value,
                )
        if isinstance(route, str) and isinstance(mailbox, str):
            if (route, mailbox) in seen:
                problems.add(
                    ("probes", "pairs", index),
                    f"expected each pair once, but {route} -> {mailbox} is also "
                    f"probes.pairs[{seen[route, mailbox]}]",
                )
            else:
                seen[route, mailbox] = index
