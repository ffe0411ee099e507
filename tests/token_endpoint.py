"""A scripted OAuth 2.0 token endpoint on loopback (port 0), for the token sources' tests.

No real identity provider runs here, so this plays one: each POST is answered by the next
`Answer` of the script (the last one repeats), optionally over TLS (a trustme certificate). It
records every request's form, so tests can assert what the agent sent (grant, client, refresh
token, the service account's JWT). `Answer(hang=True)` holds the request until the server closes:
a token endpoint that never answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.loopback_http import LoopbackHttpServer

__all__ = [
    "Answer",
    "DeviceAuthorization",
    "Issuer",
    "LoopbackAuthorization",
    "TokenEndpointServer",
    "error",
    "token",
]


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: a status and a body (a JSON object, or raw bytes), or a hang."""

    status: int = 200
    body: dict[str, Any] | bytes = field(default_factory=dict)
    hang: bool = False


def token(value: str, *, expires_in: int | None = 3600, refresh_token: str | None = None) -> Answer:
    """A successful token answer (RFC 6749 5.1)."""
    body: dict[str, Any] = {"access_token": value, "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return Answer(200, body)


def error(code: str, description: str = "", *, status: int = 400) -> Answer:
    """An OAuth error answer (RFC 6749 5.2)."""
    body = {"error": code}
    if description:
        body["error_description"] = description
    return Answer(status, body)


class Issuer:
    """A script for `TokenEndpointServer` that plays an identity provider for real accounts.

    Each refresh token maps to an account; a refresh-token grant is answered with
    `mint(account, n)` (n: that account's grants so far, from 0), e.g. `mail_system.mint_token`,
    so the access tokens are ones the test mail system's Dovecot accepts (or, when the callable
    says so, refuses). With `rotate`, every answer carries a new refresh token and the old one
    stops working (the strictest rotation a provider may do). An unknown or revoked refresh
    token gets `invalid_grant`.
    """

    def __init__(
        self,
        mint: Callable[[str, int], str],
        accounts: dict[str, str],
        *,
        rotate: bool = False,
        expires_in: int = 3600,
    ) -> None:
        self._mint = mint
        self._accounts = dict(accounts)  # refresh token -> account
        self.rotate = rotate
        self.expires_in = expires_in
        self.grants: dict[str, int] = {}  # account -> grants answered

    def revoke(self, account: str) -> None:
        """Every refresh token of `account` stops working."""
        self._accounts = {rt: user for rt, user in self._accounts.items() if user != account}

    def __call__(self, form: dict[str, str]) -> Answer:
        account = self._accounts.get(form.get("refresh_token", ""))
        if form.get("grant_type") != "refresh_token" or account is None:
            return error("invalid_grant", "AADSTS70000: the refresh token was revoked")
        n = self.grants.get(account, 0)
        self.grants[account] = n + 1
        rotated = None
        if self.rotate:
            del self._accounts[form["refresh_token"]]
            rotated = f"rt-{account}-rotated-{n + 1}"
            self._accounts[rotated] = account
        return token(self._mint(account, n), expires_in=self.expires_in, refresh_token=rotated)


class DeviceAuthorization:
    """A script playing an authorization server's device flow (RFC 8628) on one endpoint: a POST
    without grant_type is the device authorization request; device-code grants get `polls` in
    order (the last repeats), e.g. authorization_pending, slow_down, then a token."""

    DEVICE_CODE = "device-code-3f9a"
    USER_CODE = "WDJB-MJHT"
    VERIFICATION_URI = "https://login.example.test/device"

    def __init__(self, polls: list[Answer], *, interval: int = 5, expires_in: int = 900) -> None:
        self._polls = list(polls)
        self.interval = interval
        self.expires_in = expires_in

    def __call__(self, form: dict[str, str]) -> Answer:
        if "grant_type" not in form:
            return Answer(
                200,
                {
                    "device_code": self.DEVICE_CODE,
                    "user_code": self.USER_CODE,
                    "verification_uri": self.VERIFICATION_URI,
                    "expires_in": self.expires_in,
                    "interval": self.interval,
                },
            )
        if form.get("device_code") != self.DEVICE_CODE:
            return error("invalid_grant", "unknown device code")
        return self._polls.pop(0) if len(self._polls) > 1 else self._polls[0]


class LoopbackAuthorization:
    """A script playing an authorization server for the loopback redirect (RFC 8252) with PKCE
    (RFC 7636): `authorize` answers the browser's GET with a redirect carrying a code and the
    state (or `state_override`); the code grant is answered with `answer` only when its
    `code_verifier` hashes (S256) to the challenge the authorization request carried."""

    CODE = "auth-code-71c2"

    def __init__(self, answer: Answer, *, state_override: str | None = None) -> None:
        self._answer = answer
        self.state_override = state_override
        self.authorizations: list[dict[str, str]] = []

    def authorize(self, query: dict[str, str]) -> str:
        self.authorizations.append(query)
        state = self.state_override if self.state_override is not None else query["state"]
        return f"{query['redirect_uri']}?{urlencode({'code': self.CODE, 'state': state})}"

    def __call__(self, form: dict[str, str]) -> Answer:
        if form.get("grant_type") != "authorization_code" or form.get("code") != self.CODE:
            return error("invalid_grant", "unknown code")
        asked = self.authorizations[-1]
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        if (
            asked.get("code_challenge_method") != "S256"
            or base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != asked["code_challenge"]
            or form.get("redirect_uri") != asked["redirect_uri"]
        ):
            return error("invalid_grant", "PKCE verification failed")
        return self._answer


class TokenEndpointServer:
    """Serves `script` on 127.0.0.1:0 in a thread; `url` is its token URL. With `authorize`, a
    GET (the browser's authorization request) is answered with a 302 to the URL it returns."""

    def __init__(
        self,
        script: list[Answer] | Callable[[dict[str, str]], Answer],
        *,
        tls: ssl.SSLContext | None = None,
        authorize: Callable[[dict[str, str]], str] | None = None,
    ) -> None:
        self._script = script
        self.requests: list[dict[str, str]] = []  # each request's form, one value per key
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length).decode("ascii")
                form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                answer = outer._next(form)
                if answer.hang:
                    outer._http.release.wait()
                    return
                body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if authorize is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(302)
                self.send_header("Location", authorize(query))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows what matters

        self._http = LoopbackHttpServer(Handler, tls=tls)
        self.url = self._http.base_url + "/token"

    def _next(self, form: dict[str, str]) -> Answer:
        with self._lock:
            self.requests.append(form)
            if callable(self._script):
                return self._script(form)
            if len(self._script) > 1:
                return self._script.pop(0)
            return self._script[0]

    def answer(self, *answers: Answer) -> None:
        """Replace the script from the next request on."""
        with self._lock:
            self._script = list(answers)

    def __enter__(self) -> Self:
        self._http.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.stop()
