"""The status page over HTTP: served on /, basic auth on / and /metrics, TLS, built on the loop."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from agent.monitoring.catalog import new_registry
from agent.monitoring.recorder import Recorder
from agent.web.http_server import BasicAuth, HttpServer, HttpServerError, Status
from agent.web.status_page import LoopPage, PageQuery, StatusPageError

PASSWORD = "basic-auth-sekret"


class FakePage:
    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.queries: list[str] = []
        self.fail = False

    def __call__(self, *, refresh: bool = True, query: str = "") -> bytes:
        if self.fail:
            raise StatusPageError("ledger /secret/path: disk I/O error")
        self.calls.append(refresh)
        self.queries.append(query)
        return b"<!doctype html><title>page</title>"


def _server(page: FakePage | None = None, **options: object) -> HttpServer:
    registry = new_registry()
    Recorder(registry).declare([("route-a", "seed-a")])
    return HttpServer(
        registry,
        host="127.0.0.1",
        port=0,
        health=lambda: Status(True, "alive"),
        readiness=lambda: Status(True, "probing"),
        page=page,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def started() -> Iterator[list[HttpServer]]:
    servers: list[HttpServer] = []
    yield servers
    for server in servers:
        server.close()


def _get(
    url: str, *, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_status_page_is_served_on_root_as_html_with_a_strict_policy(
    started: list[HttpServer],
) -> None:
    page = FakePage()
    server = _server(page)
    started.append(server)
    base = f"http://127.0.0.1:{server.port}"

    status, headers, body = _get(f"{base}/")
    assert (status, body) == (200, b"<!doctype html><title>page</title>")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert headers["Cache-Control"] == "no-store"
    assert _get(f"{base}/?refresh=0")[0] == 200
    assert page.calls == [True, False]


def test_status_page_gets_the_url_query_and_each_query_is_a_build_of_its_own(
    started: list[HttpServer],
) -> None:
    page = FakePage()
    server = _server(page)
    started.append(server)
    base = f"http://127.0.0.1:{server.port}"
    assert _get(f"{base}/?route=r1&page=2")[0] == 200
    assert _get(f"{base}/?outcome=missing")[0] == 200
    assert page.queries == ["route=r1&page=2", "outcome=missing"]


def test_status_page_failure_is_a_503_that_reveals_nothing(started: list[HttpServer]) -> None:
    page = FakePage()
    page.fail = True
    server = _server(page)
    started.append(server)
    status, _, body = _get(f"http://127.0.0.1:{server.port}/")
    assert status == 503
    assert b"secret" not in body and b"disk" not in body


def test_status_page_off_leaves_root_not_found(started: list[HttpServer]) -> None:
    server = _server(None)
    started.append(server)
    assert _get(f"http://127.0.0.1:{server.port}/")[0] == 404


def test_basic_auth_guards_the_page_and_metrics_but_not_health(
    started: list[HttpServer],
) -> None:
    server = _server(FakePage(), basic_auth=BasicAuth("admin", PASSWORD))
    started.append(server)
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/", "/metrics"):
        status, headers, _ = _get(base + path)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="deliverability-agent", charset="UTF-8"'
        assert _get(base + path, auth=("admin", "wrong"))[0] == 401
        assert _get(base + path, auth=("root", PASSWORD))[0] == 401
        assert _get(base + path, auth=("admin", PASSWORD))[0] == 200
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/readyz")[0] == 200
    assert PASSWORD not in repr(BasicAuth("admin", PASSWORD))


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer abc", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"admin").decode()],
)
def test_basic_auth_refuses_malformed_headers(header: str | None) -> None:
    assert not BasicAuth("admin", PASSWORD).allows(header)


def test_https_serves_every_endpoint_with_the_configured_certificate(
    started: list[HttpServer], tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    server = _server(FakePage(), cert_file=cert_file, key_file=key_file)
    started.append(server)
    assert server.scheme == "https"
    context = ssl.create_default_context()
    ca.configure_trust(context)

    for path in ("/", "/metrics", "/healthz"):
        assert _get(f"https://127.0.0.1:{server.port}{path}", context=context)[0] == 200
    with pytest.raises(OSError):  # plain HTTP on the TLS port: URLError or a reset
        _get(f"http://127.0.0.1:{server.port}/healthz")
    # A client that never finishes its handshake does not block the next one.
    with socket.create_connection(("127.0.0.1", server.port)):
        assert _get(f"https://127.0.0.1:{server.port}/healthz", context=context)[0] == 200


def test_https_with_an_unusable_key_is_a_clear_error(tmp_path: Path) -> None:
    cert_file = tmp_path / "cert.pem"
    cert_file.write_text("not a certificate\n")
    with pytest.raises(HttpServerError) as caught:
        _server(None, cert_file=cert_file, key_file=cert_file)
    assert str(caught.value).startswith(f"cannot load the HTTPS certificate {cert_file}")


async def test_loop_page_builds_on_the_event_loop_thread() -> None:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    seen: list[tuple[int, bool]] = []

    def build(query: PageQuery) -> str:
        seen.append((threading.get_ident(), query.refresh))
        return "<p>ok</p>"

    page = LoopPage(loop, build)
    body = await asyncio.to_thread(lambda: page(refresh=False))
    assert body == b"<p>ok</p>"
    assert seen == [(loop_thread, False)]


async def test_loop_page_reports_a_failing_build_as_status_page_error() -> None:
    loop = asyncio.get_running_loop()

    def failing(query: PageQuery) -> str:
        raise OSError("ledger /var/lib/agent: disk I/O error")

    call: Callable[[], bytes] = LoopPage(loop, failing)
    with pytest.raises(StatusPageError) as caught:
        await asyncio.to_thread(call)
    assert str(caught.value) == "cannot read the ledger: OSError"


def test_loop_page_gives_up_on_a_loop_that_does_not_answer() -> None:
    loop = asyncio.new_event_loop()  # never run: as busy as a loop can be
    try:
        with pytest.raises(StatusPageError) as caught:
            LoopPage(loop, lambda refresh: "never", timeout=0.05)()
        assert str(caught.value) == "the agent did not answer within 0.05 s"
    finally:
        loop.close()
    with pytest.raises(StatusPageError) as closed:
        LoopPage(loop, lambda refresh: "never")()
    assert str(closed.value) == "the agent is stopping"


async def test_loop_page_serves_a_lone_surrogate_as_an_escape_rather_than_failing() -> None:
    # Server text is made valid before it is stored; this is the last line of defence.
    page = LoopPage(asyncio.get_running_loop(), lambda refresh: "<p>caf\udcff</p>")
    assert await asyncio.to_thread(page) == b"<p>caf\\udcff</p>"


async def test_loop_page_builds_in_steps_with_the_loop_running_other_work_between() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def build(query: PageQuery) -> str:  # as `run` builds it: collect_in_steps
        order.append("first step")
        loop.call_soon(order.append, "other work")
        await asyncio.sleep(0)
        order.append("last step")
        return "<p>stepped</p>"

    page = LoopPage(loop, build)
    assert await asyncio.to_thread(page) == b"<p>stepped</p>"
    assert order == ["first step", "other work", "last step"]


async def test_loop_page_reports_a_failing_step_as_status_page_error() -> None:
    async def failing(query: PageQuery) -> str:
        await asyncio.sleep(0)
        raise OSError("ledger /var/lib/agent: disk I/O error")

    call: Callable[[], bytes] = LoopPage(asyncio.get_running_loop(), failing)
    with pytest.raises(StatusPageError) as caught:
        await asyncio.to_thread(call)
    assert str(caught.value) == "cannot read the ledger: OSError"


async def test_loop_page_stops_a_build_in_steps_nobody_waits_for_any_more() -> None:
    stopped = asyncio.Event()

    async def endless(query: PageQuery) -> str:
        try:
            await asyncio.Event().wait()  # a build that never finishes
        finally:
            stopped.set()
        return "never"

    call = LoopPage(asyncio.get_running_loop(), endless, timeout=0.05)
    with pytest.raises(StatusPageError) as caught:
        await asyncio.to_thread(call)
    assert str(caught.value) == "the agent did not answer within 0.05 s"
    await stopped.wait()  # cancelled once the caller gave up; a hang here is the failure
