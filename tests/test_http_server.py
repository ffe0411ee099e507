"""The agent's HTTP endpoint serves metrics with content negotiation, health and readiness."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.web.http_server import HttpServer, HttpServerError, Status


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
