"""Credentials: how a route or mailbox signs in, and the basic-auth users of the HTTP server.

`Auth` is a username and a password, given inline or read from a file at load: the HTTP server's
basic auth and the sandbox's users. `MailAuth` is how a route (SMTP AUTH) or a mailbox (IMAP)
signs in: exactly one of a password, an OAuth 2.0 grant (`oauth2`), a command that prints an
access token (`token_command`) or a file that holds one (`token_file`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BeforeValidator

from agent.config.base import _Model, _resolve
from agent.config.errors import _invalid, _Problems
from agent.config.interpolation import _PLACEHOLDER, _fail_closed, _read_secret_file
from agent.config.scalars import ConfigPath, ExistingFile, PositiveDuration, Text
from agent.oauth.presets import DEFAULT_MICROSOFT_TENANT, Grant, Provider, preset
from agent.oauth.token_source import SaslMechanism
from agent.secrets import Secret

__all__ = ["Auth", "MailAuth", "OAuth2"]


class Auth(_Model):
    """A username and password; the password is read from password_file at load."""

    username: Text
    password: Secret
    password_file: Path | None = None  # where password was read from, if it came from a file

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        _prepare_password(data, problems, base_dir, others="password_file")

    def _check(self, problems: _Problems) -> None:
        _fail_closed(self.password, "password", problems)


def _prepare_password(
    data: dict[str, Any], problems: _Problems, base_dir: Path, *, others: str
) -> None:
    if "password" in data and "password_file" in data:
        problems.add(("password_file",), "expected either password or password_file, not both")
        del data["password_file"]
    elif "password_file" in data:
        _read_secret_file(data, problems, base_dir, value_key="password", file_key="password_file")
        if data["password"] == "":
            problems.add(("password_file",), "expected a file holding a non-empty password")
    elif "password" not in data:
        problems.add(("password",), f"missing required key (or set {others})")
        data["password"] = _PLACEHOLDER
    elif data["password"] == "":
        problems.add(("password",), "expected a non-empty password")


# --- OAuth 2.0 ---------------------------------------------------------------------------------

_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def _token_url(value: Any) -> str:
    # Plain http only to this host: a refresh token or client secret must not cross a network
    # in clear text (a local token broker or a test endpoint may listen on loopback).
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname in _LOOPBACK:
            return value
    raise _invalid("expected an https:// URL (http:// only to 127.0.0.1, ::1 or localhost)")


TokenUrl = Annotated[str, BeforeValidator(_token_url)]

_GRANT_KEYS: Final = {
    Grant.REFRESH_TOKEN: {
        "client_id",
        "client_secret",
        "refresh_token",
        "refresh_token_file",
        "device_authorization_url",
        "authorization_url",
    },
    Grant.CLIENT_CREDENTIALS: {"client_id", "client_secret"},
    Grant.SERVICE_ACCOUNT: {"service_account_file"},
}


class OAuth2(_Model):
    """An OAuth 2.0 grant that yields access tokens for XOAUTH2 / OAUTHBEARER sign-in."""

    provider: Provider | None = None  # fills token_url and scope (agent.oauth.presets)
    tenant: Text | None = None  # Microsoft's tenant id or domain; default "common" (delegated)
    grant: Grant = Grant.REFRESH_TOKEN
    token_url: TokenUrl = ""  # from provider, or the service account key's token_uri: _prepare
    client_id: Text | None = None
    client_secret: Secret | None = None  # optional for public clients (refresh grant)
    refresh_token: Secret | None = None  # the first one; rotated ones go to a file (see docs)
    # None: <state_dir>/oauth/<credential>.refresh-token (agent.oauth.sources).
    refresh_token_file: ConfigPath | None = None
    scope: str = ""  # space-separated; from provider; empty: none sent
    # Where `oauth login` gets the first refresh token (from provider for google, microsoft):
    # the device flow (RFC 8628) when set, else a loopback redirect to authorization_url.
    device_authorization_url: TokenUrl | None = None
    authorization_url: TokenUrl | None = None
    service_account_file: ExistingFile | None = None  # Google JSON key; subject = auth username
    ca_file: ExistingFile | None = None  # verify the token endpoint against this CA bundle

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        try:
            grant = Grant(data.get("grant", Grant.REFRESH_TOKEN))
        except ValueError:
            return  # the grant field reports it
        if "service_account_file" in data and "token_url" not in data:
            uri = _service_account_key(data["service_account_file"], base_dir).get("token_uri")
            if isinstance(uri, str):
                data["token_url"] = uri
        try:
            provider = Provider(data["provider"]) if "provider" in data else None
        except ValueError:
            return  # the provider field reports it
        if provider is None:
            if "token_url" not in data:
                problems.add(("token_url",), "missing required key (or set provider)")
            if "tenant" in data:
                problems.add(("tenant",), "expected only with provider: microsoft")
            return
        if provider is Provider.GOOGLE and "tenant" in data:
            problems.add(("tenant",), "expected only with provider: microsoft")
        tenant = data.get("tenant")
        app_only = provider is Provider.MICROSOFT and grant is Grant.CLIENT_CREDENTIALS
        if app_only and tenant in (None, DEFAULT_MICROSOFT_TENANT):
            problems.add(
                ("tenant",),
                "expected your tenant's id or domain (such as contoso.onmicrosoft.com) for "
                f"grant client_credentials; {DEFAULT_MICROSOFT_TENANT!r} is for delegated "
                "sign-in only",
            )
        found = preset(provider, grant, tenant=tenant if isinstance(tenant, str) else None)
        if found is None:
            usable = [g.value for g in Grant if preset(provider, g) is not None]
            problems.add(
                ("grant",),
                f"expected {' or '.join(usable)} with provider {provider.value}",
                got=grant.value,
            )
            return
        data.setdefault("token_url", found.token_url)
        data.setdefault("scope", found.scope)
        if found.device_authorization_url is not None:
            data.setdefault("device_authorization_url", found.device_authorization_url)
        if found.authorization_url is not None:
            data.setdefault("authorization_url", found.authorization_url)

    def _check(self, problems: _Problems) -> None:
        allowed = _GRANT_KEYS[self.grant]
        for key in sorted(set().union(*_GRANT_KEYS.values()) - allowed):
            if getattr(self, key) is not None:
                problems.add((key,), f"expected only with grant {_grants_with(key)}")
        if self.grant in (Grant.REFRESH_TOKEN, Grant.CLIENT_CREDENTIALS) and self.client_id is None:
            problems.add(("client_id",), f"missing required key for grant {self.grant.value}")
        if self.grant is Grant.CLIENT_CREDENTIALS and self.client_secret is None:
            problems.add(("client_secret",), "missing required key for grant client_credentials")
        if self.refresh_token is not None and self.refresh_token_file is not None:
            problems.add(
                ("refresh_token_file",),
                "expected either refresh_token or refresh_token_file, not both",
            )
        for key in ("client_secret", "refresh_token"):
            secret: Secret | None = getattr(self, key)
            if secret is not None and not secret.get_secret_value():
                problems.add((key,), "expected a non-empty value")
        if self.grant is Grant.SERVICE_ACCOUNT:
            if self.service_account_file is None:
                problems.add(
                    ("service_account_file",), "missing required key for grant service_account"
                )
            else:
                problem = _service_account_problem(self.service_account_file)
                if problem is not None:
                    problems.add(("service_account_file",), problem)


def _grants_with(key: str) -> str:
    return " or ".join(grant.value for grant, keys in _GRANT_KEYS.items() if key in keys)


def _service_account_key(raw: Any, base_dir: Path) -> dict[str, Any]:
    """The key file's JSON object, or {} when it cannot be read (reported by the field/_check)."""
    if not isinstance(raw, str | Path):
        return {}
    try:
        data = json.loads(_resolve(raw, base_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _service_account_problem(path: Path) -> str | None:
    """Why `path` is not a usable Google service account key (never quoting the key)."""
    data = _service_account_key(path, path.parent)
    expected = f"expected a Google service account JSON key file at {path}"
    if data.get("type") != "service_account":
        return expected + ' (with "type": "service_account")'
    for key in ("client_email", "private_key"):
        if not isinstance(data.get(key), str) or not data[key]:
            return expected + f" (with {key!r})"
    try:
        load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        return expected + " (its private_key is not a PEM private key)"
    return None


# --- how a route or a mailbox signs in ---------------------------------------------------------

_SIGN_INS: Final = ("oauth2", "token_command", "token_file")
_ONE_OF: Final = "password, password_file, oauth2, token_command or token_file"


def _argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _invalid("expected a non-empty list: the command and its arguments")
    if not all(isinstance(part, str) for part in value):
        raise _invalid("expected a list of strings: the command and its arguments")
    if shutil.which(value[0]) is None:
        raise _invalid(f"expected an executable program (found no {value[0]!r})", show=False)
    return tuple(value)


class MailAuth(_Model):
    """How a route (SMTP AUTH) or a mailbox (IMAP) signs in: a password or an access token."""

    username: Text
    password: Secret | None = None
    password_file: Path | None = None  # where password was read from, if it came from a file
    oauth2: OAuth2 | None = None
    token_command: Annotated[tuple[str, ...], BeforeValidator(_argv)] | None = None
    token_file: ConfigPath | None = None
    # How long one token request may take: the token endpoint's answer or the command's exit.
    token_timeout: PositiveDuration = 30.0
    mechanism: SaslMechanism | None = None  # None: what the server advertises

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        present = [key for key in ("password", "password_file", *_SIGN_INS) if key in data]
        if any(key in data for key in _SIGN_INS) and len(present) > 1:
            problems.add((present[1],), f"expected exactly one of {_ONE_OF}")
            for key in present[1:]:
                del data[key]  # reported once here, not again by the first one's checks
        if not any(key in data for key in _SIGN_INS):
            others = _ONE_OF.removeprefix("password, ")
            _prepare_password(data, problems, base_dir, others=others)

    def _check(self, problems: _Problems) -> None:
        if self.password is not None:
            _fail_closed(self.password, "password", problems)
            if self.mechanism is not None:
                problems.add(
                    ("mechanism",), "expected only with oauth2, token_command or token_file"
                )

    @property
    def uses_token(self) -> bool:
        """Whether this signs in with an OAuth access token (XOAUTH2 / OAUTHBEARER)."""
        return self.password is None
