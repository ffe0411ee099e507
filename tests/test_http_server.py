"""The agent's HTTP endpoint serves metrics with content negotiation, health and readiness."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.web.http_server import HttpServer, HttpServerError, Limits, Status


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = new_registry()
    Recorder(registry).declare([("route-a", "seed-a")])
    return registry


@pytest.fixture
def ready() -> list[Status]:
    return [Status(False, "starting")]


@pytest.fixture
def server(registry: CollectorRegistry, ready: list[Status]) -> Iterator[HttpServer]:
    server = HttpServer(
        registry,
        host="127.0.0.1",
        port=0,
        health=lambda: Status(True, "alive"),
        readiness=lambda: ready[0],
    )
    yield server
    server.close()


def _get(server: HttpServer, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_metrics_endpoint_serves_the_registry(
    server: HttpServer, registry: CollectorRegistry
) -> None:
    status, content_type, body = _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body == exposition(registry)


def test_metrics_endpoint_negotiates_openmetrics(server: HttpServer) -> None:
    status, content_type, body = _get(
        server, "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_healthz_is_ok_while_alive(server: HttpServer) -> None:
    assert _get(server, "/healthz")[0::2] == (200, b"ok: alive\n")


def test_readyz_follows_the_agent_state(server: HttpServer, ready: list[Status]) -> None:
    assert _get(server, "/readyz")[0::2] == (503, b"not ok: starting\n")
    ready[0] = Status(True, "probing")
    assert _get(server, "/readyz")[0::2] == (200, b"ok: probing\n")


def test_unknown_path_is_404(server: HttpServer) -> None:
    assert _get(server, "/nope")[0] == 404


def test_port_in_use_is_a_clear_error(server: HttpServer, registry: CollectorRegistry) -> None:
    with pytest.raises(HttpServerError, match=rf"127\.0\.0\.1:{server.port}: .*already in use"):
        HttpServer(
            registry,
            host="127.0.0.1",
            port=server.port,
            health=lambda: Status(True, ""),
            readiness=lambda: Status(True, ""),
        )


# --- scrape storms and slow clients -----------------------------------------------------------

WAIT = 60.0  # a safety net for a broken server only; no test waits for it to pass


def _serve(
    registry: CollectorRegistry, started: list[HttpServer], **limits: Any
) -> tuple[HttpServer, _GatedPage]:
    page = _GatedPage()
    server = HttpServer(
        registry,
        host="127.0.0.1",
        port=0,
        health=lambda: Status(True, "alive"),
        readiness=lambda: Status(True, "probing"),
        page=page,
        limits=Limits(**limits),
    )
    started.append(server)
    return server, page


@pytest.fixture
def started() -> Iterator[list[HttpServer]]:
    servers: list[HttpServer] = []
    yield servers
    for server in servers:
        server.close()


class _GatedPage:
    """A status page whose build waits until the test opens the gate (open by default)."""

    def __init__(self) -> None:
        self.calls = 0
        self.building = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.body = b"<!doctype html><title>page</title>"

    def __call__(self, *, refresh: bool = True, query: str = "") -> bytes:
        self.calls += 1
        self.building.set()
        assert self.gate.wait(WAIT)
        return self.body


def _connect(server: HttpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset ends it too."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()


def test_an_idle_client_that_never_sends_a_request_is_disconnected(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, _ = _serve(registry, started, request_timeout=0.5)
    with _connect(server) as idle:
        assert _read_to_end(idle) == b""  # closed without a word, as for an idle keep-alive


def test_a_slowloris_client_is_cut_off_at_the_request_deadline(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, _ = _serve(registry, started, request_timeout=0.5)
    with _connect(server) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        sent = 0
        # One header byte at a time: each arrives well within any per-read timeout, but the head
        # never completes. The server must end it anyway.
        while not select.select([slow], [], [], 0.05)[0]:
            try:
                slow.sendall(b"x")
            except OSError:
                break
            sent += 1
            assert sent < 10_000, "the server never cut the client off"
        reply = _read_to_end(slow)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert sent < Limits().max_head_bytes  # cut by the deadline, not by the size limit


def test_idle_connections_hold_no_worker(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, _ = _serve(registry, started, workers=1, request_timeout=3600)
    idle = [_connect(server) for _ in range(20)]
    try:
        for path in ("/metrics", "/", "/metrics", "/healthz"):
            assert _get(server, path)[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_clients_beyond_max_connections_wait_in_the_backlog_and_are_served_in_turn(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, _ = _serve(registry, started, max_connections=1, request_timeout=0.5)
    assert server.backlog >= 128
    with _connect(server) as holder:  # takes the only slot until request_timeout cuts it
        # Each connect completes while the slot is taken: the kernel queues it in the backlog.
        waiting = [_connect(server) for _ in range(150)]
        try:
            for sock in waiting:
                sock.sendall(_request("/healthz"))
            replies = [_read_to_end(sock) for sock in waiting]
        finally:
            for sock in waiting:
                sock.close()
        assert _read_to_end(holder) == b""
    assert all(reply.startswith(b"HTTP/1.1 200 OK\r\n") for reply in replies)


def test_a_client_that_does_not_read_its_response_is_cut_off(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, page = _serve(registry, started, max_connections=1, write_timeout=0.5)
    page.body = b"x" * (64 << 20)  # more than the socket buffers of both ends hold
    with _connect(server) as slow:
        slow.sendall(_request("/"))
        # The slow reader holds the only slot until write_timeout: then this one is served.
        assert _get(server, "/healthz")[0] == 200


def test_requests_for_the_same_page_share_one_build_and_health_needs_no_worker(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, page = _serve(registry, started, workers=1)
    page.gate.clear()
    clients = [_connect(server)]
    clients[0].sendall(_request("/"))
    assert page.building.wait(WAIT)  # the only worker now waits in the page build
    for _ in range(5):
        clients.append(_connect(server))
        clients[-1].sendall(_request("/"))
    try:
        # Answered on the server's thread while the only worker is busy.
        assert _get(server, "/healthz")[0::2] == (200, b"ok: alive\n")
        page.gate.set()
        replies = [_read_to_end(sock) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert all(reply.startswith(b"HTTP/1.1 200 OK\r\n") for reply in replies)
    assert all(reply.endswith(page.body) for reply in replies)
    assert page.calls == 1


def test_keep_alive_serves_several_requests_on_one_connection_and_head_has_no_body(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    server, _ = _serve(registry, started)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    try:
        connection.request("GET", "/metrics")
        first = connection.getresponse()
        assert (first.status, first.read()) == (200, exposition(registry))
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.status == 200
        assert int(head.headers["Content-Length"]) == len(exposition(registry))
        assert head.read() == b""
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok: alive\n"
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"this is not HTTP\r\n\r\n", b"400 Bad Request"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431 "),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"413 "),
        (b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", b"405 Method Not Allowed"),
    ],
    ids=["garbage", "huge-head", "body", "method"],
)
def test_requests_the_server_does_not_serve_get_a_clear_status(
    registry: CollectorRegistry, started: list[HttpServer], request_bytes: bytes, status: bytes
) -> None:
    server, _ = _serve(registry, started)
    with _connect(server) as sock:
        sock.sendall(request_bytes)
        reply = _read_to_end(sock)
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert _get(server, "/healthz")[0] == 200


def test_listens_on_ipv6_loopback_as_the_configuration_reference_says(
    registry: CollectorRegistry, started: list[HttpServer]
) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        server = HttpServer(
            registry,
            host="::1",
            port=0,
            health=lambda: Status(True, "alive"),
            readiness=lambda: Status(True, "probing"),
        )
    except (OSError, HttpServerError) as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    started.append(server)
    with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=WAIT) as response:
        assert response.read() == b"ok: alive\n"
