"""The agent's HTTP endpoint: the status page, /metrics, /healthz and /readyz, from a daemon thread.

/healthz answers 200 while the process's event loop is alive; /readyz answers 200 once the agent
has loaded its config, opened its ledger and started probing, and 503 while it starts or drains.
`/` is the status page (agent.web.status_page). With basic auth, `/` and /metrics need it, while
/healthz and /readyz stay open for orchestrators (they say nothing but ok or not). With TLS every
endpoint is HTTPS; each connection's handshake runs in its own thread, so one slow client cannot
stall the others.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry

from agent.errors import AgentError, ErrorCategory
from agent.monitoring.catalog import metrics_app

__all__ = ["BasicAuth", "HttpServer", "HttpServerError", "PageSource", "Status"]

log = logging.getLogger(__name__)

_TLS_HANDSHAKE_TIMEOUT = 10.0


class HttpServerError(AgentError):
    """The listen address cannot be bound; the message says which and why."""

    category = ErrorCategory.SERVER


@dataclass(frozen=True, slots=True)
class Status:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """The one username and password that opens the status page and /metrics."""

    username: str
    password: str = field(repr=False)

    def allows(self, header: str | None) -> bool:
        """Whether an Authorization header carries these credentials (constant-time compare)."""
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        username, sep, password = decoded.partition(b":")
        expected_user = self.username.encode()
        expected_password = self.password.encode()
        # Both compared every time, so the reply takes as long whichever one is wrong.
        user_ok = hmac.compare_digest(username, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        return bool(sep) and user_ok and password_ok


class PageSource(Protocol):
    """Builds the status page; raises any exception to answer 503."""

    def __call__(self, *, refresh: bool = True) -> bytes: ...


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread (ThreadingMixIn), unlike accept().
        if self.tls is not None:
            assert isinstance(request, socket.socket)
            request.settimeout(_TLS_HANDSHAKE_TIMEOUT)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("HTTPS handshake with %s failed: %s", client_address, exc)
                request.close()
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("HTTP connection from %s ended with an error", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Access logs would flood the agent's log at every scrape."""


class HttpServer:
    """Serves the endpoints until `close()`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        health: Callable[[], Status],
        readiness: Callable[[], Status],
        page: PageSource | None = None,
        basic_auth: BasicAuth | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self._metrics = metrics_app(registry)
        self._health = health
        self._readiness = readiness
        self._page = page
        self._auth = basic_auth
        tls = _tls_context(cert_file, key_file) if cert_file is not None else None
        try:
            self._server = make_server(
                host, port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = (
                "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            )
            raise HttpServerError(f"cannot listen on {host}:{port}: {reason}") from exc
        self._server.tls = tls
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        protected = path == "/metrics" or (path == "/" and self._page is not None)
        if (
            protected
            and self._auth is not None
            and not self._auth.allows(environ.get("HTTP_AUTHORIZATION"))
        ):
            body = b"authentication required\n"
            start_response(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", 'Basic realm="deliverability-agent", charset="UTF-8"'),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/" and self._page is not None:
            return self._status_page(environ, start_response)
        if path in ("/healthz", "/readyz"):
            status = self._health() if path == "/healthz" else self._readiness()
            body = (("ok" if status.ok else "not ok") + f": {status.detail}\n").encode()
            start_response(
                "200 OK" if status.ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        body = b"not found: try /, /metrics, /healthz or /readyz\n"
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _status_page(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        assert self._page is not None
        query = parse_qs(environ.get("QUERY_STRING", ""))
        refresh = query.get("refresh", ["1"])[0] not in ("0", "off", "no")
        try:
            body = self._page(refresh=refresh)
        except Exception as exc:
            log.warning("status page unavailable: %s", exc)
            body = b"status page unavailable; see the agent's log\n"
            start_response(
                "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ],
        )
        return [body]


def _tls_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise HttpServerError(
            f"cannot load the HTTPS certificate {cert_file} and key {key_file}: {exc}"
        ) from exc
    return context
