"""Read, interpolate and validate the agent's YAML configuration.

Reading (file -> dict) is kept apart from validating (dict -> Config) so that a reload or a
`check-config` command can report every problem at once. Every failure is a `ConfigError` whose
lines each read `<file>: <key.path>: <what was expected>, got <value>`; secrets are never echoed.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import ipaddress
import logging
import math
import os
import re
import socket
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from agent.errors import AgentError, ErrorCategory
from agent.model import AuthResult, Stage, TlsMode

__all__ = [
    "Auth",
    "Blocklists",
    "Cleanup",
    "Config",
    "ConfigError",
    "Dns",
    "Folders",
    "Http",
    "HttpTls",
    "ListenAddress",
    "LogLevel",
    "Mailbox",
    "Nameserver",
    "PairRef",
    "Probes",
    "Route",
    "Sandbox",
    "SandboxBounce",
    "SandboxDeliver",
    "SandboxMailbox",
    "SandboxMatch",
    "SandboxReply",
    "SandboxRule",
    "SandboxVerdicts",
    "Timeouts",
    "format_duration",
    "load_config",
    "parse_duration",
    "read_config_file",
    "validate_config",
]


class ConfigError(AgentError):
    """The configuration cannot be used; `str()` lists every problem, one per line."""

    category = ErrorCategory.CONFIG

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


# --- problems raised from inside validation ------------------------------------------------------

_PROBLEM: Final = "config"  # pydantic error type of every problem our own validators report
_SHOW: Final = "show_input"  # context key: may the input be echoed after the message
_HIDDEN: Final = object()  # "do not echo a value" marker for _Problems.add
# Stands in for a secret that could not be read, so the problem is reported once (not again as
# "missing"); _fail_closed makes sure it never survives into a loaded Config.
_PLACEHOLDER: Final = "\x00unresolved\x00"
_SECRET_KEYS: Final = frozenset({"password", "secret", "auth"})
_SECRET_MIN: Final = 16

_Loc = tuple[str | int, ...]


def _invalid(message: str, *, show: bool = True) -> PydanticCustomError:
    """An error for a single-value validator; pydantic attaches the key path and the input."""
    return PydanticCustomError(_PROBLEM, message, {_SHOW: show})


class _Problems:
    """Problems found by a model's own checks, each at a key path relative to that model."""

    def __init__(self) -> None:
        self.details: list[InitErrorDetails] = []

    def add(self, loc: _Loc, message: str, *, got: object = _HIDDEN) -> None:
        shown = got is not _HIDDEN
        self.details.append(
            InitErrorDetails(
                type=_invalid(message, show=shown), loc=loc, input=got if shown else None
            )
        )


def _reraise(
    title: str, errors: Sequence[ErrorDetails], extra: Sequence[InitErrorDetails]
) -> NoReturn:
    """Raise one ValidationError holding pydantic's errors and ours, so none hides another."""
    details: list[InitErrorDetails] = []
    for err in errors:
        ctx = err.get("ctx")
        if err["type"] == _PROBLEM:
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError(_PROBLEM, err["msg"], ctx),
                    loc=err["loc"],
                    input=err["input"],
                )
            )
        else:
            detail = InitErrorDetails(type=err["type"], loc=err["loc"], input=err["input"])
            if ctx is not None:
                detail["ctx"] = ctx
            details.append(detail)
    raise ValidationError.from_exception_data(title, [*details, *extra])


class _Model(BaseModel):
    """Strict, immutable base: unknown keys are refused and a loaded config cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        """Fill defaults derived from other raw keys and record problems visible in raw data."""

    def _check(self, problems: _Problems) -> None:
        """Record problems that involve more than one validated field."""

    @model_validator(mode="wrap")
    @classmethod
    def _validate(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        # A wrap validator lets raw-data checks, field errors and cross-field checks all be
        # reported together instead of the first failing stage hiding the others.
        problems = _Problems()
        if isinstance(data, Mapping):
            data = dict(data)
            cls._prepare(data, problems, _base_dir(info))
        try:
            model = handler(data)
        except ValidationError as exc:
            _reraise(exc.title, exc.errors(), problems.details)
        model._check(problems)
        if problems.details:
            raise ValidationError.from_exception_data(cls.__name__, problems.details)
        return model


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping) and isinstance(context.get("base_dir"), Path):
        base: Path = context["base_dir"]
        return base
    return Path.cwd()  # validated without validate_config(): resolve against the working dir


def _resolve(raw: str | Path, base_dir: Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path


# --- scalar types ------------------------------------------------------------------------------

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
Host = Annotated[str, BeforeValidator(_host)]
Word = Annotated[str, BeforeValidator(_word)]
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


# --- durations ---------------------------------------------------------------------------------

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


def _duration(*, minimum: float = 0.0, positive: bool = False) -> BeforeValidator:
    def validate(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise _invalid(f"expected {_DURATION_HINT}") from None
        if positive and seconds <= 0:
            raise _invalid("expected a duration greater than 0")
        if seconds < minimum:
            raise _invalid(f"expected a duration of at least {format_duration(minimum)}")
        return seconds

    return BeforeValidator(validate)


PositiveDuration = Annotated[float, _duration(positive=True)]


# --- models ------------------------------------------------------------------------------------


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def level(self) -> int:
        """The `logging` module's number for this level."""
        return logging.getLevelNamesMapping()[self.name]


class Cleanup(enum.StrEnum):
    """What happens to a probe message in the seed mailbox once it has been read."""

    DELETE = "delete"
    KEEP = "keep"


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


def _read_secret_file(
    data: dict[str, Any],
    problems: _Problems,
    base_dir: Path,
    *,
    value_key: str,
    file_key: str,
) -> None:
    """Replace `file_key` by the file's content under `value_key`, or record why it cannot be."""
    raw = data[file_key]
    data[value_key] = _PLACEHOLDER  # every early return below records a problem
    if not isinstance(raw, str) or not raw:
        problems.add((file_key,), "expected the path of a file", got=raw)
        data[file_key] = None  # reported here, not a second time by the field
        return
    path = _resolve(raw, base_dir)
    try:
        content = path.read_bytes().decode("utf-8")
    except OSError as exc:
        problems.add((file_key,), f"expected a readable file at {path} ({exc.strerror})", got=raw)
        return
    except UnicodeDecodeError:
        problems.add((file_key,), f"expected UTF-8 text in {path}", got=raw)
        return
    # Editors and `echo` add one newline; anything beyond that may be part of the secret.
    content = content.removesuffix("\n").removesuffix("\r") if content.endswith("\n") else content
    data[value_key] = content
    data[file_key] = str(path)


def _fail_closed(secret: SecretStr, key: str, problems: _Problems) -> None:
    if secret.get_secret_value() == _PLACEHOLDER and not problems.details:
        problems.add((key,), "could not be resolved")


class Auth(_Model):
    """SMTP AUTH or IMAP LOGIN credentials; the password is read from password_file at load."""

    username: Text
    password: SecretStr
    password_file: Path | None = None  # where password was read from, if it came from a file

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "password" in data and "password_file" in data:
            problems.add(("password_file",), "expected either password or password_file, not both")
            del data["password_file"]
        elif "password_file" in data:
            _read_secret_file(
                data, problems, base_dir, value_key="password", file_key="password_file"
            )
            if data["password"] == "":
                problems.add(("password_file",), "expected a file holding a non-empty password")
        elif "password" not in data:
            problems.add(("password",), "missing required key (or set password_file)")
            data["password"] = _PLACEHOLDER
        elif data["password"] == "":
            problems.add(("password",), "expected a non-empty password")

    def _check(self, problems: _Problems) -> None:
        _fail_closed(self.password, "password", problems)


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


def _plaintext_auth_problem(tls: TlsMode) -> str | None:
    if tls is TlsMode.NONE:
        return (
            "refusing to send the password in clear text over tls: none; use TLS, or set "
            "allow_plaintext_auth: true if the network path is trusted"
        )
    if tls is TlsMode.OPPORTUNISTIC:
        return (
            "refusing auth over tls: opportunistic, which sends the password in clear text when "
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


_SMTP_TLS_BY_PORT: Final = {
    25: TlsMode.OPPORTUNISTIC,
    465: TlsMode.IMPLICIT,
    587: TlsMode.STARTTLS,
    2525: TlsMode.STARTTLS,
}


class Route(_Model):
    """One way of sending probes: an SMTP submission server or relay, and the sender identity."""

    name: Name
    host: Host
    port: Port = 587
    tls: TlsMode = TlsMode.STARTTLS  # default derived from the port in _prepare
    tls_verify: bool = True
    ca_file: ExistingFile | None = None
    auth: Auth | None = None
    allow_plaintext_auth: bool = False
    from_: HeaderAddress = Field(alias="from")
    envelope_from: AddrSpec = ""  # default: the address in `from`, filled in by _prepare
    ehlo_name: Word = ""  # default: socket.getfqdn(), filled in by _prepare
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # Bounces come back to this bounce mailbox's address (the envelope sender of every probe),
    # with the probe id in it as user+<probe-id>@domain when verp is on.
    bounce_mailbox: Name | None = None
    verp: bool = True
    sending_ips: tuple[IpAddress, ...] = ()  # the IPs mail leaves from, for the DNS checks

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
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
            problem = _plaintext_auth_problem(self.tls)
            if problem is not None:
                problems.add(("auth",), problem)

    @property
    def from_address(self) -> str:
        """The bare address in the From header."""
        addr = _header_addr_spec(self.from_)
        assert addr is not None  # validated
        return addr


def _imap_tls(value: Any) -> TlsMode:
    if value in (TlsMode.IMPLICIT, TlsMode.NONE):
        return TlsMode(value)
    if value == TlsMode.STARTTLS:
        raise _invalid(
            "expected 'implicit' or 'none' (the IMAP client has no STARTTLS: "
            "use tls: implicit on the implicit-TLS port 993)"
        )
    raise _invalid("expected 'implicit' or 'none'")


_IMAP_TLS_BY_PORT: Final = {993: TlsMode.IMPLICIT, 143: TlsMode.NONE}


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
    provider: Name = "other"
    host: Host
    port: Port = 993
    tls: Annotated[TlsMode, BeforeValidator(_imap_tls)] = TlsMode.IMPLICIT  # from port: _prepare
    tls_verify: bool = True
    ca_file: ExistingFile | None = None
    auth: Auth
    allow_plaintext_auth: bool = False
    address: AddrSpec
    folders: Folders = Field(default_factory=Folders)
    trusted_authserv_ids: tuple[Word, ...] = ()  # empty: trust only the topmost header

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        _tls_default(data, _IMAP_TLS_BY_PORT, 993)

    def _check(self, problems: _Problems) -> None:
        if not self.allow_plaintext_auth:
            problem = _plaintext_auth_problem(self.tls)
            if problem is not None:
                problems.add(("auth",), problem)


class PairRef(_Model):
    """One route -> mailbox combination to probe."""

    route: Name
    mailbox: Name


_DEFAULT_INTERVAL: Final = 300.0


class Probes(_Model):
    """How often probes are sent, how long they may take to arrive, and what is probed."""

    interval: Annotated[float, _duration(minimum=10.0)] = _DEFAULT_INTERVAL
    jitter: Annotated[float, _duration()] = _DEFAULT_INTERVAL / 10  # default: 10% of interval
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


# --- the embedded sandbox mail provider --------------------------------------------------------

# Before AUTH the sandbox cannot tell one route from another, so rules act from AUTH on; before
# RCPT it does not know the recipient either.
_SANDBOX_STAGES: Final = (Stage.AUTH, Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.END_OF_DATA)
_RECIPIENT_STAGES: Final = (Stage.RCPT, Stage.DATA, Stage.END_OF_DATA)
_ENHANCED_CODE_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_LOOPBACK_HINT: Final = "expected a loopback IP address such as 127.0.0.1 or ::1"


def _quoted_list(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _loopback(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(_LOOPBACK_HINT)
    try:
        address = ipaddress.ip_address(value.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise _invalid(_LOOPBACK_HINT) from None
    if not address.is_loopback:
        raise _invalid(f"{_LOOPBACK_HINT} (the sandbox serves this machine only)")
    return str(address)


def _sandbox_stage(value: Any) -> Stage:
    names = [stage.value for stage in _SANDBOX_STAGES]
    if isinstance(value, str) and value in names:
        return Stage(value)
    raise _invalid(
        f"expected {_quoted_list(names)} (before AUTH the sandbox cannot tell routes apart)"
    )


class SandboxReply(_Model):
    """Answer a 4xx or 5xx at one SMTP stage instead of going on."""

    stage: Annotated[Stage, BeforeValidator(_sandbox_stage)]
    code: Annotated[int, Field(ge=400, le=599)]
    enhanced_code: Word | None = None
    text: Text = "refused by a sandbox rule"

    def _check(self, problems: _Problems) -> None:
        code = self.enhanced_code
        if code is not None and (
            not _ENHANCED_CODE_RE.fullmatch(code) or code[0] != str(self.code)[0]
        ):
            problems.add(
                ("enhanced_code",),
                f"expected an enhanced status code of the class of {self.code}, such as "
                f"{str(self.code)[0]}.7.1",
                got=code,
            )


class SandboxVerdicts(_Model):
    """The verdicts the sandbox stamps into an Authentication-Results header; unset: left out."""

    spf: AuthResult | None = None
    dkim: AuthResult | None = None
    dmarc: AuthResult | None = None
    arc: AuthResult | None = None


class SandboxDeliver(_Model):
    """Deliver into a folder of the recipient's sandbox mailbox after a delay."""

    folder: Text = "INBOX"
    delay: Annotated[float, _duration()] = 0.0
    authentication_results: SandboxVerdicts | None = None
    authserv_id: Word | None = None  # None: the sandbox's authserv_id


class SandboxBounce(_Model):
    """Accept, then after a delay send a DSN (RFC 3464) back to the envelope sender."""

    delay: Annotated[float, _duration()] = 0.0
    status: Word = "5.1.1"
    diagnostic: Text = "550 5.1.1 The email account that you tried to reach does not exist"
    mailbox: AddrSpec | None = None  # None: the mailbox of the envelope sender (+detail dropped)

    def _check(self, problems: _Problems) -> None:
        if not (_ENHANCED_CODE_RE.fullmatch(self.status) and self.status.startswith("5")):
            problems.add(
                ("status",), "expected a permanent status code such as 5.1.1", got=self.status
            )


class SandboxMatch(_Model):
    """Which transactions a rule applies to: every key given must match."""

    login: Text | None = None  # the SMTP AUTH username: one per route
    recipient: AddrSpec | None = None  # an envelope recipient, compared case-insensitively

    def _check(self, problems: _Problems) -> None:
        if self.login is None and self.recipient is None:
            problems.add((), "expected login, recipient or both")


_ACTIONS: Final = ("deliver", "reply", "discard", "bounce")


class SandboxRule(_Model):
    """One scenario: what the sandbox does with the transactions its `match` selects."""

    match: SandboxMatch
    deliver: SandboxDeliver | None = None
    reply: SandboxReply | None = None
    discard: bool = False
    bounce: SandboxBounce | None = None

    def _check(self, problems: _Problems) -> None:
        chosen = [key for key in _ACTIONS if getattr(self, key) not in (None, False)]
        if len(chosen) != 1:
            problems.add(
                (),
                f"expected exactly one of {_quoted_list(_ACTIONS)}"
                + (f", got {' and '.join(chosen)}" if chosen else ""),
            )
        reply = self.reply
        if self.match.recipient is not None and reply and reply.stage not in _RECIPIENT_STAGES:
            names = [stage.value for stage in _RECIPIENT_STAGES]
            problems.add(
                ("reply", "stage"),
                f"expected {_quoted_list(names)} in a rule that matches a recipient (the "
                "recipient is not known before RCPT)",
                got=reply.stage.value,
            )

    @property
    def action(self) -> str:
        """Which action this rule takes: "deliver", "reply", "discard" or "bounce"."""
        return next(key for key in _ACTIONS if getattr(self, key) not in (None, False))


class SandboxMailbox(_Model):
    """A seed mailbox the sandbox hosts: mail for `address` lands here, read over IMAP."""

    address: AddrSpec
    auth: Auth


class Sandbox(_Model):
    """A local SMTP submission server and IMAP server, started inside the agent, for demos."""

    host: Annotated[str, BeforeValidator(_loopback)] = "127.0.0.1"
    hostname: Word = "sandbox.localhost"
    authserv_id: Word = ""  # default: hostname, filled in by _prepare
    submission_port: Port = 2587
    submissions_port: Port = 2465
    imaps_port: Port = 2993
    users: tuple[Auth, ...] = ()
    mailboxes: tuple[SandboxMailbox, ...] = ()
    rules: tuple[SandboxRule, ...] = ()

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        if "authserv_id" not in data and isinstance(data.get("hostname"), str):
            data["authserv_id"] = data["hostname"]
        elif "authserv_id" not in data:
            data["authserv_id"] = "sandbox.localhost"

    def _check(self, problems: _Problems) -> None:
        ports: dict[int, str] = {}
        for key in ("submission_port", "submissions_port", "imaps_port"):
            port: int = getattr(self, key)
            if port in ports:
                problems.add((key,), f"expected a port not already used by {ports[port]}", got=port)
            ports.setdefault(port, key)
        _unique(
            [user.username for user in self.users], ("users",), ("username",), "username", problems
        )
        _unique(
            [m.auth.username for m in self.mailboxes],
            ("mailboxes",),
            ("auth", "username"),
            "username",
            problems,
        )
        addresses = [m.address.lower() for m in self.mailboxes]
        _unique(addresses, ("mailboxes",), ("address",), "address", problems)
        logins = [user.username for user in self.users]
        for index, rule in enumerate(self.rules):
            login = rule.match.login
            if login is not None and login not in logins:
                problems.add(
                    ("rules", index, "match", "login"),
                    f"expected the username of a sandbox user ({', '.join(logins) or 'none'})",
                    got=login,
                )
            target = rule.bounce.mailbox if rule.bounce is not None else None
            if target is not None and target.lower() not in addresses:
                problems.add(
                    ("rules", index, "bounce", "mailbox"),
                    "expected the address of a sandbox mailbox",
                    got=target,
                )


def _unique(
    values: Sequence[str], section: _Loc, key: _Loc, what: str, problems: _Problems
) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            problems.add(
                (*section, index, *key),
                f"expected a unique {what} (also used by {_format_loc((*section, first[value]))})",
                got=value,
            )
        first.setdefault(value, index)


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
    secret: SecretStr  # HMAC key for probe tokens; read from secret_file when that is set
    secret_file: Path | None = None
    log_level: LogLevel = LogLevel.INFO
    routes: tuple[Route, ...]  # non-empty: checked in _prepare
    mailboxes: tuple[Mailbox, ...]  # non-empty: checked in _prepare
    probes: Probes = Field(default_factory=Probes)
    # Mailboxes that receive bounces (DSNs) for routes' probes; never probed as seeds.
    bounce_mailboxes: tuple[Mailbox, ...] = ()
    sandbox: Sandbox | None = None  # a local demo mail provider, started by the agent
    http: Http = Field(default_factory=Http)
    dns: Dns | None = None  # DNS checks of the sending setup; None: no DNS checks

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

    def bounce_mailbox(self, name: str) -> Mailbox:
        """The bounce mailbox called `name`; KeyError if there is none."""
        for mailbox in self.bounce_mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)

    def envelope_from(self, route: Route, probe_id: str) -> str:
        """The envelope sender of a probe: VERP on the route's bounce mailbox, if it has one."""
        if route.bounce_mailbox is None:
            return route.envelope_from
        address = self.bounce_mailbox(route.bounce_mailbox).address
        if not route.verp:
            return address
        local, domain = address.rsplit("@", 1)
        return f"{local}+{probe_id}@{domain}"


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
    routes = data.get("routes")
    for index, route in enumerate(routes if isinstance(routes, list) else []):
        wanted = route.get("bounce_mailbox") if isinstance(route, Mapping) else None
        if isinstance(wanted, str) and wanted not in known:
            problems.add(
                ("routes", index, "bounce_mailbox"),
                f"expected the name of a configured bounce mailbox ({', '.join(known) or 'none'})",
                got=wanted,
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


# --- ${VAR} interpolation ------------------------------------------------------------------------

_REFERENCE_RE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_INNER_RE: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _interpolate(value: str, environ: Mapping[str, str], *, secret: bool) -> tuple[str, list[str]]:
    """`value` with ${VAR} and ${VAR:-default} expanded and $${ unescaped; plus any problems.

    A problem quotes a bad reference only when `value` is not a secret: a password that happens
    to contain "${" must not be half-echoed.
    """
    out: list[str] = []
    problems: list[str] = []
    position = 0
    for match in _REFERENCE_RE.finditer(value):
        out.append(value[position : match.start()])
        position = match.end()
        token, inner = match.group(0), match.group(1)
        if token == "$${":
            out.append("${")
        elif inner is None:
            problems.append("unclosed ${ (write $${ for a literal ${)")
        elif (ref := _INNER_RE.fullmatch(inner)) is None:
            quoted = "" if secret else f" ${{{inner}}}"
            problems.append(
                f"invalid variable reference{quoted}: expected ${{NAME}} or ${{NAME:-default}} "
                "(write $${ for a literal ${)"
            )
        else:
            name, default = ref.group(1), ref.group(2)
            found = environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    problems.append(
                        f"environment variable {name} is not set "
                        f"(write ${{{name}:-default}} to give a default)"
                    )
                    found = ""
                else:
                    found = default
            out.append(found)
    out.append(value[position:])
    return "".join(out), problems


def _interpolate_tree(
    node: Any, environ: Mapping[str, str], loc: _Loc, problems: list[tuple[_Loc, str]]
) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, environ, (*loc, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, environ, (*loc, i), problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        last_key = next((part for part in reversed(loc) if isinstance(part, str)), None)
        value, found = _interpolate(node, environ, secret=last_key in _SECRET_KEYS)
        problems.extend((loc, problem) for problem in found)
        return value
    return node


# --- turning errors into lines -----------------------------------------------------------------


def _format_loc(loc: _Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model inside an annotation such as `tuple[Route, ...]` or `Auth | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (tuple, list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _known_keys(loc: _Loc) -> list[str]:
    """The keys the model at `loc` accepts, for a "did you mean" hint."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        model = None if field is None else _model_in(field.annotation)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _explain(err: ErrorDetails) -> tuple[str, bool]:
    """Our wording for one pydantic error, and whether its input may be echoed."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == _PROBLEM:
        return err["msg"], bool(ctx.get(_SHOW, True))
    if kind == "missing":
        return "missing required key", False
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        hint = difflib.get_close_matches(str(key), _known_keys(err["loc"][:-1]), n=1)
        return "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""), False
    if kind in ("enum", "literal_error"):
        return f"expected {ctx['expected']}", True
    if kind in ("too_short", "string_too_short"):
        size = ctx.get("min_length", 1)
        if isinstance(err["input"], str):
            return f"expected at least {size} character{'s' * (size != 1)}", True
        return (
            "expected a non-empty list" if size == 1 else f"expected at least {size} items"
        ), False
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than {}",
            "greater_than_equal": "at least {}",
            "less_than": "less than {}",
            "less_than_equal": "at most {}",
        }[kind]
        return "expected a value " + words.format(next(iter(ctx.values()), "")), True
    simple = {
        "string_type": "expected a string",
        "string_unicode": "expected a string",
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected an integer",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "finite_number": "expected a finite number",
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "path_type": "expected a path",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
        "dict_type": "expected a mapping",
        "list_type": "expected a list",
        "tuple_type": "expected a list",
        "iterable_type": "expected a list",
        "invalid_key": "expected a string key",
    }
    if kind in simple:
        return simple[kind], True
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix(
            "Assertion failed, "
        ), True
    return f"invalid value ({kind})", True


def _problem_line(source: str, loc: _Loc, message: str) -> str:
    path = _format_loc(loc)
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def _error_line(source: str, err: ErrorDetails) -> str:
    loc = tuple(err["loc"])
    message, show = _explain(err)
    last_key = next((p for p in reversed(loc) if isinstance(p, str)), None)
    if show and last_key not in _SECRET_KEYS:
        message += f", got {_show(err['input'])}"
    return _problem_line(source, loc, message)


_TOP_KEYS: Final = [field.alias or name for name, field in Config.model_fields.items()]


def _order(loc: _Loc) -> tuple[int, int]:
    """Sort key grouping problems by top-level key in documentation order, then list index."""
    if not loc:
        return (-1, -1)
    first = loc[0]
    rank = _TOP_KEYS.index(first) if first in _TOP_KEYS else len(_TOP_KEYS)
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1
    return (rank, index)


# --- public entry points -------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-string keys instead of silently accepting them."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"expected a string key, got {_show(key)} (quote the key)",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The YAML mapping in `path`; ConfigError if it cannot be read or is not a YAML mapping."""
    source = os.fspath(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            [f"{source}: cannot read the configuration file: {exc.strerror}"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: expected UTF-8 text, got byte {exc.start}"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: as safe as safe_load
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "syntax error"
        context = ""
        if exc.context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        elif exc.context:
            context = f" ({exc.context})"
        raise ConfigError([f"{source}: {where}invalid YAML: {problem}{context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings, got {_show(data)}"])
    return data


def validate_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    source: str = "<config>",
) -> Config:
    """Interpolate ${VAR}s from `environ`, then validate; relative paths resolve against base_dir.

    `source` names the file in error lines. Raises ConfigError listing every problem.
    """
    interpolation: list[tuple[_Loc, str]] = []
    expanded = _interpolate_tree(dict(data), environ, (), interpolation)
    try:
        config = Config.model_validate(
            expanded, context={"base_dir": base_dir.expanduser().absolute()}
        )
    except ValidationError as exc:
        errors = exc.errors()
    else:
        if not interpolation:
            return config
        errors = []
    # A failed ${VAR} stands in as "", so its own errors would only repeat the real cause.
    broken = [loc for loc, _ in interpolation]
    lines = [(loc, _problem_line(source, loc, message)) for loc, message in interpolation]
    for err in errors:
        loc = tuple(err["loc"])
        knock_on = any(loc[: len(bad)] == bad for bad in broken)
        if err["type"] == "extra_forbidden" or not knock_on:
            lines.append((loc, _error_line(source, err)))
    lines.sort(key=lambda item: _order(item[0]))
    raise ConfigError([line for _, line in lines])


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the config file at `path`; environ defaults to os.environ."""
    return validate_config(
        read_config_file(path),
        base_dir=Path(path).absolute().parent,
        environ=os.environ if environ is None else environ,
        source=os.fspath(path),
    )
