"""A scripted HTTPS server on loopback (port 0) playing Postmaster Tools and SNDS for the feeds.

Neither Google's nor Microsoft's service runs locally, so this answers each request with what a
route function returns for (method, path): a status, a body and headers (Retry-After). It records
every request (method, path with query, headers, JSON body) so tests can assert what the agent
sent. `hang` holds a request until the server closes: a feed that never answers.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self

from tests.loopback_http import LoopbackHttpServer

__all__ = ["FeedServer", "Reply", "Request", "Route"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    json: Any = None


Route = Callable[[Request], Reply]


class FeedServer:
    """Serves `route` over TLS on 127.0.0.1:0 in a thread; `url` is its base URL."""

    def __init__(self, route: Route, *, tls: ssl.SSLContext) -> None:
        self.route = route
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                )
                with outer._lock:
                    outer.requests.append(request)
                reply = outer.route(request)
                if reply.hang:
                    outer._http.release.wait()
                    return
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LoopbackHttpServer(Handler, tls=tls)
        self.url = self._http.base_url

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
