"""The agent's HTTP endpoint: /metrics, /healthz and /readyz, served from a daemon thread.

/healthz answers 200 while the process's event loop is alive; /readyz answers 200 once the agent
has loaded its config, opened its ledger and started probing, and 503 while it starts or drains.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry

from agent.metrics import metrics_app

__all__ = ["HttpServer", "HttpServerError", "Status"]


class HttpServerError(Exception):
    """The listen address cannot be bound; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Status:
    ok: bool
    detail: str


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


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
    ) -> None:
        self._metrics = metrics_app(registry)
        self._health = health
        self._readiness = readiness
        try:
            self._server = make_server(
                host, port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = (
                "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            )
            raise HttpServerError(f"cannot listen on {host}:{port}: {reason}") from exc
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
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path in ("/healthz", "/readyz"):
            status = self._health() if path == "/healthz" else self._readiness()
            body = (("ok" if status.ok else "not ok") + f": {status.detail}\n").encode()
            start_response(
                "200 OK" if status.ok else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        body = b"not found: try /metrics, /healthz or /readyz\n"
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]
