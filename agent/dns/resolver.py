"""DNS resolver adapter: the only module that imports dnspython's resolver.

Every lookup goes to the configured nameservers (each an address and a port, so a test can point
the agent at a local authoritative server on a high port) or, with none configured, to the
system's resolver. A name that does not exist and a name without records of the type both read as
an empty answer; everything else that keeps a question from being answered (timeout, SERVFAIL or
REFUSED from every nameserver, a malformed name, no resolver configuration) becomes a `DnsError`.

There is no cache: each check wants what is published now, and a resolver in front of the agent
caches within TTLs anyway. `SyncResolver` serves the same questions from a worker thread, for
pyspf, whose SPF evaluation calls its lookups synchronously.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from agent.errors import AgentError, ErrorCategory

__all__ = [
    "DnsError",
    "DnsErrorKind",
    "Mx",
    "Resolver",
    "SyncResolver",
    "Value",
    "reverse_pointer",
]

DEFAULT_TIMEOUT: Final = 5.0
_ATTEMPT_TIMEOUT: Final = 2.0


class DnsErrorKind(enum.StrEnum):
    """Why a question got no usable answer."""

    TIMEOUT = "timeout"
    SERVFAIL = "servfail"  # every nameserver answered SERVFAIL or REFUSED, or could not be reached
    INVALID_NAME = "invalid_name"
    NO_RESOLVER = "no_resolver"  # no nameserver configured and none in the system configuration
    ERROR = "error"


class DnsError(AgentError):
    """A DNS question that got no usable answer; the message names the question, never a secret."""

    category = ErrorCategory.PEER

    def __init__(self, kind: DnsErrorKind, name: str, rdtype: str, detail: str) -> None:
        self.kind = kind
        self.name = name
        self.rdtype = rdtype
        super().__init__(f"{rdtype} {name}: {kind}: {detail}")


@dataclass(frozen=True, slots=True, order=True)
class Mx:
    """One MX record; `exchange` has no trailing dot and is "" for a null MX (RFC 7505)."""

    preference: int
    exchange: str


Value = str | Mx  # TXT (strings joined), A/AAAA (address), PTR (name), MX

_TYPES: Final = ("A", "AAAA", "MX", "PTR", "TXT")


def reverse_pointer(ip: str) -> str:
    """The in-addr.arpa or ip6.arpa name of an IP address, without the trailing dot."""
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) if name != dns.name.root else ""


def _values(rdtype: str, answer: dns.resolver.Answer) -> tuple[Value, ...]:
    values: list[Value] = []
    for rdata in answer:
        if isinstance(rdata, TXT):
            # One record may be split in several strings; SPF and DKIM join them without spaces.
            values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        elif isinstance(rdata, A | AAAA):
            values.append(rdata.address)
        elif isinstance(rdata, MX):
            values.append(Mx(rdata.preference, _name_text(rdata.exchange)))
        elif isinstance(rdata, PTR):
            values.append(_name_text(rdata.target))
    if rdtype == "MX":
        values.sort(key=lambda mx: mx if isinstance(mx, Mx) else Mx(0, ""))
    return tuple(values)


def _translate(exc: Exception, name: str, rdtype: str) -> DnsError:
    """Our typed error for a dnspython exception raised while asking `rdtype name`."""
    if isinstance(exc, dns.exception.Timeout):
        kind = DnsErrorKind.TIMEOUT
    elif isinstance(exc, dns.resolver.NoNameservers):
        kind = DnsErrorKind.SERVFAIL
    elif isinstance(exc, dns.resolver.NoResolverConfiguration):
        kind = DnsErrorKind.NO_RESOLVER
    elif isinstance(exc, dns.name.NameTooLong | dns.name.LabelTooLong | dns.name.EmptyLabel):
        kind = DnsErrorKind.INVALID_NAME
    else:
        kind = DnsErrorKind.ERROR
    detail = str(exc) or type(exc).__name__
    return DnsError(kind, name, rdtype, detail)


def _nameserver_objects(
    nameservers: Sequence[tuple[str, int]],
) -> list[str | dns.nameserver.Nameserver]:
    return [dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers]


def _configure(
    resolver: dns.resolver.BaseResolver, nameservers: Sequence[tuple[str, int]], timeout: float
) -> None:
    if nameservers:
        resolver.nameservers = _nameserver_objects(nameservers)
    # Short attempts, so a dead nameserver hands over to the next well within the lifetime.
    resolver.timeout = min(timeout, _ATTEMPT_TIMEOUT)
    resolver.lifetime = timeout  # per question, over every attempt and nameserver
    resolver.cache = None


def _check_type(rdtype: str) -> None:
    if rdtype not in _TYPES:
        raise ValueError(f"unsupported record type {rdtype!r}")


class Resolver:
    """Asks the configured nameservers (address, port), or the system's, with no cache."""

    def __init__(
        self, *, nameservers: Sequence[tuple[str, int]] = (), timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get(self, name: str, rdtype: str) -> dns.asyncresolver.Resolver:
        # Built on first use: reading the system configuration can fail, and that failure
        # belongs to a lookup (an error of one run), not to starting the agent.
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
            except dns.exception.DNSException as exc:
                raise _translate(exc, name, rdtype) from None
            _configure(resolver, self.nameservers, self.timeout)
            self._resolver = resolver
        return self._resolver

    async def lookup(self, name: str, rdtype: str) -> tuple[Value, ...]:
        """The records of type `rdtype` at `name`; empty if the name or the type does not exist."""
        _check_type(rdtype)
        resolver = self._get(name, rdtype)
        try:
            qname = dns.name.from_text(name)
            answer = await resolver.resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except (dns.exception.DNSException, OSError) as exc:
            raise _translate(exc, name, rdtype) from None
        return _values(rdtype, answer)

    async def txt(self, name: str) -> tuple[str, ...]:
        return tuple(str(value) for value in await self.lookup(name, "TXT"))

    async def addresses(self, name: str) -> tuple[str, ...]:
        """The A and AAAA addresses of `name`."""
        found = [str(value) for value in await self.lookup(name, "A")]
        found.extend(str(value) for value in await self.lookup(name, "AAAA"))
        return tuple(found)

    async def a(self, name: str) -> tuple[str, ...]:
        return tuple(str(value) for value in await self.lookup(name, "A"))

    async def mx(self, name: str) -> tuple[Mx, ...]:
        return tuple(value for value in await self.lookup(name, "MX") if isinstance(value, Mx))

    async def ptr(self, ip: str) -> tuple[str, ...]:
        """The PTR names of an IP address."""
        return tuple(str(value) for value in await self.lookup(reverse_pointer(ip), "PTR"))

    def sync(self) -> SyncResolver:
        """A blocking twin with the same nameservers and timeout, for use in a worker thread."""
        return SyncResolver(nameservers=self.nameservers, timeout=self.timeout)


class SyncResolver:
    """The blocking twin of `Resolver`, for libraries that look up synchronously (pyspf)."""

    def __init__(
        self, *, nameservers: Sequence[tuple[str, int]] = (), timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self._resolver: dns.resolver.Resolver | None = None

    def lookup(self, name: str, rdtype: str) -> tuple[Value, ...]:
        """As `Resolver.lookup`, blocking."""
        _check_type(rdtype)
        try:
            if self._resolver is None:
                resolver = dns.resolver.Resolver(configure=not self.nameservers)
                _configure(resolver, self.nameservers, self.timeout)
                self._resolver = resolver
            answer = self._resolver.resolve(dns.name.from_text(name), rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ()
        except (dns.exception.DNSException, OSError) as exc:
            raise _translate(exc, name, rdtype) from None
        return _values(rdtype, answer)
