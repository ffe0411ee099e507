"""The agent's HTTP endpoint: the status page, /metrics, /healthz and /readyz, on its own thread.

/healthz answers 200 while the process's event loop is alive; /readyz answers 200 once the agent
has loaded its config, opened its ledger and started probing, and 503 while it starts, drains
or cannot write its ledger (the readiness callable says which).
`/` is the status page (agent.web.status_page). With basic auth, `/` and /metrics need it, while
/healthz and /readyz stay open for orchestrators (they say nothing but ok or not). With TLS every
endpoint is HTTPS.

How it serves, and why. A scrape storm or a few slow clients must neither starve Prometheus nor
slow the probes down, so:

* An asyncio loop on the server's own thread accepts connections, runs TLS handshakes and reads
  requests; a small pool of worker threads (`Limits.workers`) runs the two endpoints that cost
  CPU, /metrics (tens of ms for 100 pairs) and the status page. An idle or slow client costs a
  socket and a coroutine, never a thread or a worker. Not the agent's own loop: rendering there
  would delay sends and IMAP, and /healthz could not report that loop stalled. Not the stdlib's
  threaded server it replaces: it gave every connection a thread for as long as the client liked
  (no read timeout on plain HTTP; 400 idle clients held 403 threads) and listened with a backlog
  of 5 (13 % of a 200-client storm's requests failed; tests/benchmarks/http_load.py). Tuned
  (a bigger backlog, a bounded pool, socket timeouts), its blocking reads would still let each
  idle or slow client hold a worker until its timeout: as many such clients as workers would
  stall every scrape.
* Requests for the same response that arrive while it is being built share that build: one
  /metrics exposition (per format, compression and name filter) or one status page at a time,
  however many clients ask. A response may therefore reflect the agent up to one build (a few
  tens of ms) before the request. The page is built on the agent's loop (the ledger lives
  there), so this also keeps a storm of page views from flooding that loop.
* /healthz, /readyz, 401 and 404 are answered on the server's thread, without a worker, so they
  answer even while every worker waits on a stalled agent loop. `health` and `readiness` must
  therefore be cheap and never block.
* Limits (`Limits`): listen backlog 1024 (the kernel caps it at net.core.somaxconn); at most 512
  open connections (more wait in the backlog); a TLS handshake within 10 s; a request's head
  (request line and headers) complete within 10 s of the connection opening or of the previous
  response (HTTP/1.1 keep-alive), which also cuts off idle and slowloris clients; at most 16 KiB
  of head; a response taken by the client within 30 s.
* Request bodies only for `POST /webhooks/<route>` (ESP event webhooks, `WebhookSink`), with a
  Content-Length of at most 1 MiB (more: 413 without reading it; chunked: 411), read within the
  request timeout; the post is verified and read on a worker, never on this thread or the agent's.
  Other requests with a body get 413. The server's basic auth does not cover webhooks: each
  provider's own signature or credentials do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import email.utils
import errno
import hmac
import http.client
import io
import logging
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry

from agent.errors import AgentError, ErrorCategory
from agent.monitoring.catalog import metrics_app

__all__ = [
    "BasicAuth",
    "HttpServer",
    "HttpServerError",
    "Limits",
    "PageSource",
    "Status",
    "WebhookAnswer",
    "WebhookSink",
]

log = logging.getLogger(__name__)

_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_WEBHOOK_PREFIX: Final = "/webhooks/"
MAX_WEBHOOK_BODY: Final = 1024 * 1024
_READ_CHUNK: Final = 65536
# Transient accept() failures: out of descriptors or buffers. Retried after a pause, as asyncio's
# own server does, rather than spinning on a listener that stays readable.
_ACCEPT_BACKOFF: Final = 0.5
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class HttpServerError(AgentError):
    """The listen address cannot be bound; the message says which and why."""

    category = ErrorCategory.SERVER


@dataclass(frozen=True, slots=True)
class Status:
    ok: bool
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """How much the server takes on; the defaults are what the agent runs with (docs/deploy.md)."""

    backlog: int = 1024  # connections the kernel queues before accept (capped by somaxconn)
    max_connections: int = 512  # open at once; further ones wait in the backlog
    workers: int = 4  # threads building /metrics and the status page
    tls_handshake_timeout: float = 10.0
    request_timeout: float = 10.0  # for a whole request head, from accept or the last response
    write_timeout: float = 30.0  # for the client to take a whole response
    max_head_bytes: int = 16384  # request line and headers

    def __post_init__(self) -> None:
        for name in ("backlog", "max_connections", "workers", "max_head_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("tls_handshake_timeout", "request_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


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


class WebhookAnswer(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def text(self) -> str: ...


class WebhookSink(Protocol):
    """Takes posts to /webhooks/<route> (agent.webhooks.WebhookReceiver)."""

    def accepts(self, route: str) -> bool:
        """Whether the route has a webhook; cheap (called on the server's thread)."""
        ...

    def refuse(self, route: str, reason: Any) -> None:
        """Count a post refused before its body was read; cheap and non-blocking."""
        ...

    def __call__(self, route: str, headers: dict[str, str], body: bytes) -> WebhookAnswer:
        """Verify, read and hand over a post; runs on a worker, in bounded time."""
        ...


class PageSource(Protocol):
    """Builds the status page; raises any exception to answer 503."""

    def __call__(self, *, refresh: bool = True, query: str = "") -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Response:
    status: str  # "200 OK"
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _BadRequest(Exception):
    """The client sent something that is not a request we serve; answered, then closed."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.response = _plain(status, text)


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
        limits: Limits | None = None,
        webhooks: WebhookSink | None = None,
    ) -> None:
        self._metrics = metrics_app(registry)
        self._webhooks = webhooks
        self._health = health
        self._readiness = readiness
        self._page = page
        self._auth = basic_auth
        self.limits = limits = limits if limits is not None else Limits()
        self._tls = _tls_context(cert_file, key_file) if cert_file is not None else None
        self.scheme = "https" if self._tls is not None else "http"
        self._listener = _listen(host, port, limits.backlog)
        self._host = host
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.workers, thread_name_prefix="http-worker"
        )
        self._building: dict[Hashable, asyncio.Future[_Response]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="http-server", daemon=True
        )
        self._thread.start()
        started.wait()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def backlog(self) -> int:
        """The backlog the listening socket was given (the kernel caps it at somaxconn)."""
        return self.limits.backlog

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join()
        # A worker may still wait on the agent's loop for a page: it ends with its timeout.
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._listener.close()

    # --- the server's thread ---------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        try:
            asyncio.run(self._serve(started))
        finally:
            started.set()  # also when the loop could not start: never leave __init__ waiting

    async def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        started.set()
        connections: set[asyncio.Task[None]] = set()
        accepting = asyncio.create_task(self._accept(connections))
        await self._stop.wait()
        accepting.cancel()
        for task in connections:
            task.cancel()
        for building in self._building.values():
            # Cancelled, a build that ends after this loop closed is dropped without a word.
            building.cancel()
        await asyncio.gather(accepting, *connections, return_exceptions=True)

    async def _accept(self, connections: set[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.limits.max_connections)
        while True:
            # Waiting for a slot before accept() leaves further clients in the kernel's backlog.
            await slots.acquire()
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as exc:
                slots.release()
                log.debug("HTTP accept failed: %s", exc)
                if exc.errno in _RESOURCE_ERRNOS:
                    await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            task = asyncio.create_task(self._connection(sock, peer))
            connections.add(task)

            def done(task: asyncio.Task[None]) -> None:
                connections.discard(task)
                slots.release()

            task.add_done_callback(done)

    async def _connection(self, sock: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        limits = self.limits
        reader = asyncio.StreamReader(limit=max(_READ_CHUNK, limits.max_head_bytes), loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self._tls,
                ssl_handshake_timeout=limits.tls_handshake_timeout if self._tls else None,
            )
        except (OSError, ssl.SSLError) as exc:
            log.debug("HTTPS handshake with %s failed: %s", peer, exc)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        pending = bytearray()  # bytes read past the end of the previous request's head
        try:
            while True:
                try:
                    head = await self._read_head(reader, pending)
                except _BadRequest as bad:
                    await self._send(writer, bad.response, head_only=False, keep_alive=False)
                    return
                if head is None:  # the client left, or stayed silent past request_timeout
                    return
                response, head_only, keep_alive = await self._handle(head, peer, reader, pending)
                if not await self._send(writer, response, head_only, keep_alive):
                    return
                if not keep_alive:
                    return
        except (OSError, ssl.SSLError) as exc:
            log.debug("HTTP connection from %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("HTTP connection from %s failed", peer, exc_info=True)
        finally:
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, pending: bytearray) -> bytes | None:
        """The next request's head, None when the client is gone or silent; _BadRequest."""
        limits = self.limits
        try:
            async with asyncio.timeout(limits.request_timeout):
                while True:
                    del pending[: len(pending) - len(pending.lstrip(b"\r\n"))]
                    end = _HEAD_END.search(pending)
                    if end is not None:
                        head = bytes(pending[: end.start()])
                        del pending[: end.end()]
                        if len(head) > limits.max_head_bytes:
                            break
                        return head
                    if len(pending) > limits.max_head_bytes:
                        break
                    chunk = await reader.read(_READ_CHUNK)
                    if not chunk:
                        return None
                    pending += chunk
        except TimeoutError:
            if not pending:
                return None  # an idle connection: closed without a word, as keep-alive allows
            raise _BadRequest(
                "408 Request Timeout",
                f"request head not complete within {limits.request_timeout:g} s",
            ) from None
        raise _BadRequest(
            "431 Request Header Fields Too Large",
            f"request head over {limits.max_head_bytes} bytes",
        )

    async def _handle(
        self, head: bytes, peer: Any, reader: asyncio.StreamReader, pending: bytearray
    ) -> tuple[_Response, bool, bool]:
        """The response, whether to send its head only (HEAD), and whether to keep the
        connection open."""
        try:
            environ = self._environ(head, peer)
        except _BadRequest as bad:
            return bad.response, False, False
        method = environ["REQUEST_METHOD"]
        keep_alive = _keeps_alive(environ)
        if environ["PATH_INFO"].startswith(_WEBHOOK_PREFIX):
            response, body_read = await self._webhook(environ, reader, pending)
            return response, False, keep_alive and body_read
        if environ["agent.has_body"]:
            # Nothing else takes a body; refusing one spares reading and framing it.
            response = _plain("413 Content Too Large", "request bodies are not accepted")
            return response, False, False
        if method not in ("GET", "HEAD"):
            response = _plain("405 Method Not Allowed", "use GET or HEAD", ("Allow", "GET, HEAD"))
            return response, False, keep_alive
        environ["REQUEST_METHOD"] = "GET"  # HEAD: the same response, sent without its body
        key = self._build_key(environ)
        if key is None:
            response = _call(self._app, environ)  # cheap: health, readiness, 401, 404
        else:
            response = await self._shared(key, environ)
        return response, method == "HEAD", keep_alive

    async def _webhook(
        self, environ: WSGIEnvironment, reader: asyncio.StreamReader, pending: bytearray
    ) -> tuple[_Response, bool]:
        """POST /webhooks/<route>: the body read here, the post verified on a worker; and
        whether the body was read (if not, the connection is closed after the answer)."""
        route = environ["PATH_INFO"][len(_WEBHOOK_PREFIX) :]
        sink = self._webhooks
        known = sink is not None and bool(route) and "/" not in route and sink.accepts(route)
        # The body is framed (and read) before the answer, so a refusal on a kept-alive
        # connection never leaves unread bytes that would reset it under the answer.
        headers: dict[str, str] = environ["agent.headers"]
        raw = headers.get("content-length", "0").strip()
        if "transfer-encoding" in headers or not raw.isdigit():
            if sink is not None and known:
                sink.refuse(route, "malformed")
            if "transfer-encoding" in headers:
                return _plain("411 Length Required", "send a Content-Length"), False
            return _plain("400 Bad Request", "expected a Content-Length"), False
        length = int(raw)
        if length > MAX_WEBHOOK_BODY:
            if sink is not None and known:
                sink.refuse(route, "too_large")
            text = f"bodies of at most {MAX_WEBHOOK_BODY} bytes"
            return _plain("413 Content Too Large", text), False
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                while len(pending) < length:
                    chunk = await reader.read(_READ_CHUNK)
                    if not chunk:
                        return _plain("400 Bad Request", "the body ended early"), False
                    pending += chunk
        except TimeoutError:
            text = f"body not complete within {self.limits.request_timeout:g} s"
            return _plain("408 Request Timeout", text), False
        body = bytes(pending[:length])
        del pending[:length]
        if sink is None or not known:
            return _plain("404 Not Found", "no webhook for this route"), True
        if environ["REQUEST_METHOD"] != "POST":
            return _plain("405 Method Not Allowed", "use POST", ("Allow", "POST")), True
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._workers, sink, route, headers, body)
        except Exception:
            log.warning("webhook %s failed", route, exc_info=True)
            return _plain("500 Internal Server Error", "internal error; see the log"), False
        status = f"{answer.status} {http.client.responses.get(answer.status, '')}".rstrip()
        return _plain(status, answer.text), True

    def _build_key(self, environ: WSGIEnvironment) -> Hashable | None:
        """What makes two requests' responses the same when building it costs CPU; None for the
        cheap answers, which are made on the server's thread."""
        path = environ["PATH_INFO"]
        if self._auth is not None and not self._auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return None  # a 401
        if path == "/metrics":
            # prometheus_client reads exactly these: format, compression, name[] filter.
            return (
                path,
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_ACCEPT_ENCODING"),
                environ.get("QUERY_STRING", ""),
            )
        if path == "/" and self._page is not None:
            return (
                path,
                environ.get("QUERY_STRING", ""),
            )  # filters and page: agent.web.status_page
        return None

    async def _shared(self, key: Hashable, environ: WSGIEnvironment) -> _Response:
        """The response for `key`: from the build under way, or from a new one on a worker."""
        loop = asyncio.get_running_loop()
        building = self._building.get(key)
        if building is None:
            building = loop.run_in_executor(self._workers, _call, self._app, environ)
            self._building[key] = building

            def forget(future: asyncio.Future[_Response]) -> None:
                if self._building.get(key) is future:
                    del self._building[key]

            building.add_done_callback(forget)
        # Shielded: a client that leaves must not cancel the build the others wait for.
        return await asyncio.shield(building)

    async def _send(
        self, writer: asyncio.StreamWriter, response: _Response, head_only: bool, keep_alive: bool
    ) -> bool:
        """Write the response; False when the client did not take it within write_timeout."""
        lines = [f"HTTP/1.1 {response.status}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines += [
            f"Content-Length: {len(response.body)}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await writer.drain()
        except TimeoutError:
            writer.transport.abort()
            return False
        return True

    def _environ(self, head: bytes, peer: Any) -> WSGIEnvironment:
        """The WSGI environ of a request head; _BadRequest when it is not HTTP/1.x."""
        request_line, _, header_block = head.partition(b"\n")
        parts = request_line.rstrip(b"\r").decode("latin-1").split(" ")
        if len(parts) != 3 or not re.fullmatch(r"HTTP/1\.\d", parts[2]):
            raise _BadRequest("400 Bad Request", "not an HTTP/1.x request line")
        method, target, version = parts
        try:
            headers = http.client.parse_headers(io.BytesIO(header_block + b"\r\n\r\n"))
        except http.client.HTTPException as exc:
            raise _BadRequest("400 Bad Request", f"unreadable headers ({exc})") from None
        length = headers.get("Content-Length", "0").strip()
        has_body = headers.get("Transfer-Encoding") is not None or length != "0"
        if target.startswith(("http://", "https://")):  # absolute form
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        environ: WSGIEnvironment = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self._host or "0.0.0.0",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": str(peer[0]) if isinstance(peer, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "agent.has_body": has_body,
            "agent.headers": {name.lower(): value for name, value in headers.items()},
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    # --- the endpoints (WSGI) ----------------------------------------------------------------

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
        try:
            body = self._page(refresh=_refresh(environ), query=environ.get("QUERY_STRING", ""))
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


def _call(
    app: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]], environ: WSGIEnvironment
) -> _Response:
    """Run a WSGI app to completion; a failure is a 500 that says nothing of it."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None  # the legacy write() callable: unused by our apps

    try:
        body = b"".join(app(environ, start_response))
    except Exception:
        log.warning("HTTP %s failed", environ.get("PATH_INFO"), exc_info=True)
        return _plain("500 Internal Server Error", "internal error; see the agent's log")
    status, headers = started[-1]
    # Length and connection are the server's to say (the body may have been compressed).
    kept = tuple(
        (name, value)
        for name, value in headers
        if name.lower() not in ("content-length", "connection", "date")
    )
    return _Response(status, kept, body)


def _plain(status: str, text: str, *extra: tuple[str, str]) -> _Response:
    return _Response(
        status, (("Content-Type", "text/plain; charset=utf-8"), *extra), f"{text}\n".encode()
    )


def _refresh(environ: WSGIEnvironment) -> bool:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    return query.get("refresh", ["1"])[0] not in ("0", "off", "no")


def _keeps_alive(environ: WSGIEnvironment) -> bool:
    tokens = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    if environ["SERVER_PROTOCOL"] == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on host:port; IPv4 first for a name that has both (as before)."""
    try:
        infos = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise HttpServerError(f"cannot listen on {host}:{port}: {reason}") from exc


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
