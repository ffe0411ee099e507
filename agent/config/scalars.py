"""Scalar configuration values: how each is spelled in YAML and checked.

Names, ports, hosts, addresses, domain names, IP addresses, durations ("30s", "1h30m"), files,
the HTTP listen address, DNS nameservers and the small enumerations (log level, cleanup). Each
validator raises `_invalid` with the expected spelling, so every message reads the same way.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
import math
import re
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, ValidationInfo

from agent.config.base import _base_dir, _resolve
from agent.config.errors import _invalid
from agent.providers import canonical_provider, parse_trust_rule

__all__ = [
    "AddrSpec",
    "Cleanup",
    "ConfigPath",
    "DnsName",
    "ExistingFile",
    "HeaderAddress",
    "Host",
    "IpAddress",
    "ListenAddress",
    "LogLevel",
    "Name",
    "Nameserver",
    "Port",
    "PositiveDuration",
    "Provider",
    "Text",
    "TrustRuleText",
    "Word",
    "format_duration",
    "parse_duration",
]


_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_ADDR_SPEC_RE: Final = re.compile(r"[^\s@<>,;\"]+@[^\s@<>,;\"]+")


def _name(value: Any) -> str:
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return value
    raise _invalid("expected a name made of letters, digits, '_', '.' and '-'")


def _port(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise _invalid("expected a port number from 1 to 65535")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise _invalid("expected a host name or IP address")
    if ":" in value:
        try:
            return str(ipaddress.IPv6Address(value.removeprefix("[").removesuffix("]")))
        except ValueError:
            raise _invalid(
                "expected a host name or IP address without a port (the port goes in port)"
            ) from None
    return value


def _word(value: Any) -> str:
    text = _text(value)
    if any(c.isspace() for c in text):
        raise _invalid("expected a string without spaces")
    return text


def _provider(value: Any) -> str:
    """A provider profile's name (agent.providers), aliases and case resolved."""
    if isinstance(value, str):
        try:
            return canonical_provider(value)
        except ValueError as exc:
            raise _invalid(f"{exc} (other for any other server, given by host)") from None
    raise _invalid("expected a provider name such as gmail or other")


def _trust_rule(value: Any) -> str:
    text = _text(value)
    try:
        parse_trust_rule(text)
    except ValueError:
        raise _invalid(
            "expected an authserv-id such as mx.google.com, '*.' and a domain such as "
            "*.yahoo.com, or 'topmost'"
        ) from None
    return text.strip()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("expected a string")
    if not value.strip():
        raise _invalid("expected a non-empty string")
    return value


def _addr_spec(value: Any) -> str:
    if isinstance(value, str) and _ADDR_SPEC_RE.fullmatch(value):
        return value
    raise _invalid("expected an email address such as probe@example.com")


def _header_addr_spec(value: str) -> str | None:
    """The address inside a From header value ("Name <a@b>" or "a@b"), or None if malformed."""
    parsed = getaddresses([value])
    if len(parsed) != 1 or not _ADDR_SPEC_RE.fullmatch(parsed[0][1]):
        return None
    return parsed[0][1]


def _header_address(value: Any) -> str:
    if isinstance(value, str) and _header_addr_spec(value) is not None:
        return value.strip()
    raise _invalid(
        "expected one email address, optionally with a display name: Name <probe@example.com>"
    )


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, _base_dir(info))
    if not path.is_file():
        raise _invalid(f"expected an existing file at {path}")
    return path


def _config_path(value: Path, info: ValidationInfo) -> Path:
    return _resolve(value, _base_dir(info))


Name = Annotated[str, BeforeValidator(_name)]
Port = Annotated[int, BeforeValidator(_port)]
Provider = Annotated[str, BeforeValidator(_provider)]
Host = Annotated[str, BeforeValidator(_host)]
Word = Annotated[str, BeforeValidator(_word)]
# An Authentication-Results trust rule (agent.providers): "mx.google.com", "*.yahoo.com", "topmost".
TrustRuleText = Annotated[str, BeforeValidator(_trust_rule)]
Text = Annotated[str, BeforeValidator(_text)]
AddrSpec = Annotated[str, BeforeValidator(_addr_spec)]
HeaderAddress = Annotated[str, BeforeValidator(_header_address)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
ConfigPath = Annotated[Path, AfterValidator(_config_path)]


_DNS_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE: Final = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _dns_name(value: Any) -> str:
    if isinstance(value, str) and _DNS_NAME_RE.fullmatch(value.removesuffix(".")):
        return value.removesuffix(".").lower()
    raise _invalid("expected a domain name such as example.com")


def _ip_address(value: Any) -> str:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(value.removeprefix("[").removesuffix("]")))
    raise _invalid("expected an IP address such as 192.0.2.10 or 2001:db8::10")


DnsName = Annotated[str, BeforeValidator(_dns_name)]
IpAddress = Annotated[str, BeforeValidator(_ip_address)]


# --- durations -----------------------------------------------------------------------------------

_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_RE: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_HINT: Final = "a duration such as 30s, 5m, 1h30m, 250ms or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds in "30s", "5m", "1h30m", "250ms", "1.5s" or a plain number; ValueError if not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    text = str(value).strip()
    if isinstance(value, int | float) or re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(value)
    elif _DURATION_RE.fullmatch(text):
        seconds = 0.0
        order = list(_UNITS)
        last = -1
        for number, unit in _DURATION_PART_RE.findall(text):
            # "1h30m" reads naturally; "30m1h" or "5m5m" is more likely a typo than intended.
            if order.index(unit) <= last:
                raise ValueError(f"units out of order in {value!r}")
            last = order.index(unit)
            seconds += float(number) * _UNITS[unit]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest "1h30m" / "250ms" style spelling of a duration, for messages."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    parts = []
    rest = seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            count = int(rest // size)
            parts.append(f"{count}{unit}")
            rest -= count * size
    if rest or not parts:
        parts.append(f"{round(rest, 3):g}s")
    return "".join(parts)


def _duration(
    *, minimum: float = 0.0, maximum: float = math.inf, positive: bool = False
) -> BeforeValidator:
    def validate(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _invalid(f"expected {_DURATION_HINT}") from None
        if positive and seconds <= 0:
            raise _invalid("expected a duration greater than 0")
        if seconds < minimum:
            raise _invalid(f"expected a duration of at least {format_duration(minimum)}")
        if seconds > maximum:
            raise _invalid(f"expected a duration of at most {format_duration(maximum)}")
        return seconds

    return BeforeValidator(validate)


PositiveDuration = Annotated[float, _duration(positive=True)]


# --- enumerations --------------------------------------------------------------------------------


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        """The `logging` module's number for this level."""
        return logging.getLevelNamesMapping()[self.name]


class StartMode(enum.StrEnum):
    """When each pair's probes are sent within their interval."""

    SPREAD = "spread"  # at a fixed phase from a stable hash of the pair: a constant send rate
    IMMEDIATE = "immediate"  # the first right after start (within the jitter), then every interval


class Cleanup(enum.StrEnum):
    """What happens to a probe message in the seed mailbox once it has been read."""

    DELETE = "delete"
    KEEP = "keep"


# --- where the agent listens ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the agent's HTTP server listens; host "" means every interface, port 0 any port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _listen(value: Any) -> ListenAddress:
    if isinstance(value, ListenAddress):
        return value
    message = "expected host:port, such as 127.0.0.1:9465 or [::1]:9465"
    if not isinstance(value, str) or ":" not in value:
        raise _invalid(message)
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(message) from None
    elif not re.fullmatch(r"[A-Za-z0-9.-]*", host):
        raise _invalid(message)
    if not port.isdigit() or int(port) > 65535:
        raise _invalid(message)
    return ListenAddress(host, int(port))


# --- DNS servers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nameserver:
    """A DNS server to ask: an IP address and a port."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _nameserver(value: Any) -> Nameserver:
    if isinstance(value, Nameserver):
        return value
    message = "expected an IP address and an optional port: 192.0.2.53, 127.0.0.1:5353, [::1]:53"
    if not isinstance(value, str):
        raise _invalid(message)
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise _invalid(message)
            port = rest[1:]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _invalid(message) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _invalid(message)
    return Nameserver(str(address), int(port))
