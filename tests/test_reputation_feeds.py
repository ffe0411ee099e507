"""The reputation feeds against a scripted HTTPS server on loopback (a trustme CA) that answers
Google's and Microsoft's documented formats (tests/reputation_samples.py), errors included."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.app.service import Agent
from agent.config import Reputation, validate_config
from agent.monitoring.catalog import exposition, new_registry
from agent.monitoring.recorder import Recorder
from agent.oauth.token_source import StaticTokenSource
from agent.reputation.feeds import ReputationFeeds, _Runner
from agent.reputation.http import FeedHttp
from agent.reputation.model import (
    Feed,
    FeedError,
    FeedErrorKind,
    FeedFailed,
    FilterResult,
    PostmasterFetched,
    SndsFetched,
)
from agent.reputation.postmaster import PostmasterClient
from agent.reputation.snds import SndsClient
from tests.one_pair_config import one_pair_config
from tests.reputation_samples import (
    SNDS_DATA,
    SNDS_IP_STATUS,
    compliance_answer,
    google_error,
    stats_answer,
)
from tests.reputation_server import FeedServer, Reply, Request, Route

NOW = 1_796_500_000.0  # 2026-12-05 (UTC)
SNDS_KEY = "sekret-snds-key-0123"
RED_11 = {"ip": "192.0.2.11", "result": "red"}


def google(request: Request) -> Reply:
    domain = request.path.split("/")[3]
    if request.path.endswith("/domainStats:query"):
        return Reply(200, stats_answer(domain))
    if request.path.endswith("/complianceStatus"):
        return Reply(200, compliance_answer(domain))
    return Reply(404, google_error(404, "NOT_FOUND", "no such method"))


def snds(request: Request) -> Reply:
    if request.path.startswith("/snds/data.aspx"):
        return Reply(200, SNDS_DATA, {"Content-Type": "text/csv"})
    if request.path.startswith("/snds/ipStatus.aspx"):
        return Reply(200, SNDS_IP_STATUS, {"Content-Type": "text/csv"})
    return Reply(404, b"")


Serve = Callable[[Route], FeedServer]


@pytest.fixture
def serve(server_tls: ssl.SSLContext) -> Iterator[Serve]:
    """Starts a scripted feed server per call; all are closed after the test."""
    started: list[FeedServer] = []

    def start(route: Route) -> FeedServer:
        server = FeedServer(route, tls=server_tls).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def _postmaster(
    url: str, ca_file: Path, tokens: StaticTokenSource, domains: tuple[str, ...] = ("example.com",)
) -> PostmasterClient:
    return PostmasterClient(
        base_url=url,
        domains=domains,
        tokens=tokens,
        http=FeedHttp(ca_file=ca_file, timeout=10.0),
        days=7,
        clock=lambda: NOW,
    )


async def test_postmaster_reads_each_domain_with_the_bearer_token(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(google)
    tokens = StaticTokenSource("access-token-1")

    fetched, errors = await _postmaster(server.url, ca_file, tokens).fetch()

    assert errors == []
    (report,) = fetched.domains
    assert report.day is not None and report.day.spam_ratio == pytest.approx(0.0021)
    assert len(report.compliance) == 5
    query, compliance = server.requests
    assert (query.method, query.path) == ("POST", "/v2/domains/example.com/domainStats:query")
    assert query.headers["authorization"] == "Bearer access-token-1"
    assert query.json["timeQuery"]["dateRanges"]["dateRanges"][0]["end"] == {
        "year": 2026,
        "month": 12,
        "day": 5,
    }
    assert (compliance.method, compliance.path) == (
        "GET",
        "/v2/domains/example.com/complianceStatus",
    )


async def test_postmaster_empty_day_is_no_data(serve: Serve, ca_file: Path) -> None:
    def empty(request: Request) -> Reply:
        if request.path.endswith("/domainStats:query"):
            return Reply(200, {})  # Google leaves out the dates without data
        return google(request)

    server = serve(empty)

    fetched, _ = await _postmaster(server.url, ca_file, StaticTokenSource("t")).fetch()

    assert fetched.domains[0].day is None


async def test_postmaster_follows_next_page_tokens(serve: Serve, ca_file: Path) -> None:
    def paged(request: Request) -> Reply:
        if request.path.endswith("/domainStats:query"):
            stats = stats_answer("example.com")["domainStats"]
            if request.json.get("pageToken") == "page-2":
                return Reply(200, {"domainStats": stats[4:]})
            return Reply(200, {"domainStats": stats[:4], "nextPageToken": "page-2"})
        return google(request)

    server = serve(paged)

    fetched, _ = await _postmaster(server.url, ca_file, StaticTokenSource("t")).fetch()

    day = fetched.domains[0].day
    assert day is not None and day.tls_inbound_ratio == pytest.approx(0.999)
    assert len(server.requests) == 3


async def test_postmaster_401_is_an_auth_error_and_the_token_is_refused(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(lambda r: Reply(401, google_error(401, "UNAUTHENTICATED", "bad token")))
    tokens = StaticTokenSource("expired")

    with pytest.raises(FeedError) as caught:
        await _postmaster(server.url, ca_file, tokens).fetch()

    assert caught.value.kind is FeedErrorKind.AUTH
    assert tokens.refusals == 1
    assert "expired" not in str(caught.value)


async def test_postmaster_403_on_one_domain_still_reads_the_others(
    serve: Serve, ca_file: Path
) -> None:
    def denied(request: Request) -> Reply:
        if "/not-mine.example/" in request.path:
            return Reply(403, google_error(403, "PERMISSION_DENIED", "no access"))
        return google(request)

    server = serve(denied)
    client = _postmaster(
        server.url, ca_file, StaticTokenSource("t"), ("not-mine.example", "example.com")
    )

    fetched, errors = await client.fetch()

    assert [r.domain for r in fetched.domains] == ["example.com"]
    assert [e.kind for e in errors] == [FeedErrorKind.PERMISSION_DENIED]
    assert "not-mine.example" in str(errors[0])


async def test_postmaster_429_retry_after_holds_the_next_fetch_back(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(
        lambda r: Reply(
            429, google_error(429, "RESOURCE_EXHAUSTED", "quota"), {"Retry-After": "5400"}
        )
    )
    client = _postmaster(server.url, ca_file, StaticTokenSource("t"))
    recorded: list[object] = []

    async def fetch() -> list[PostmasterFetched | SndsFetched | FeedFailed]:
        fetched, _ = await client.fetch()
        return [fetched]

    runner = _Runner(
        Feed.POSTMASTER,
        fetch,
        interval=6 * 3600.0,
        timeout=30.0,
        record=recorded.append,
        clock=lambda: NOW,
        rng=random.Random(3),
    )

    delay = await runner.run_once()

    assert delay >= 5400.0  # backoff alone would retry within two minutes
    assert len(server.requests) == 1  # the first 429 ends the fetch: no other domain, no retry
    (failed,) = recorded
    assert isinstance(failed, FeedFailed) and failed.kind is FeedErrorKind.QUOTA
    assert runner.state.failures == 1


async def test_a_huge_body_is_cut_at_the_cap_and_counted_as_endpoint(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(lambda r: Reply(200, b"1.2.3.4," * 200_000))
    http = FeedHttp(ca_file=ca_file, timeout=10.0, max_body=64 * 1024)

    with pytest.raises(FeedError) as caught:
        await http.request("GET", f"{server.url}/snds/data.aspx?key={SNDS_KEY}")

    assert caught.value.kind is FeedErrorKind.ENDPOINT
    assert "more than 65536 bytes" in str(caught.value)
    assert SNDS_KEY not in str(caught.value)


async def test_a_feed_that_never_answers_ends_at_its_deadline_as_timeout(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(lambda r: Reply(hang=True))
    client = SndsClient(
        base_url=f"{server.url}/snds",
        key=SNDS_KEY,
        ips=(),
        cap=20,
        http=FeedHttp(ca_file=ca_file, timeout=30.0),
        clock=lambda: NOW,
    )
    recorded: list[object] = []

    async def fetch() -> list[PostmasterFetched | SndsFetched | FeedFailed]:
        return [await client.fetch()]

    runner = _Runner(
        Feed.SNDS,
        fetch,
        interval=6 * 3600.0,
        timeout=0.3,
        record=recorded.append,
        clock=lambda: NOW,
        rng=random.Random(3),
    )

    await runner.run_once()

    assert [(r.feed, r.kind) for r in recorded] == [(Feed.SNDS, FeedErrorKind.TIMEOUT)]  # type: ignore[attr-defined]


async def test_snds_reads_both_lists_with_the_key_and_never_shows_it(
    serve: Serve, ca_file: Path
) -> None:
    server = serve(snds)
    client = SndsClient(
        base_url=f"{server.url}/snds",
        key=SNDS_KEY,
        ips=(),
        cap=20,
        http=FeedHttp(ca_file=ca_file, timeout=10.0),
        clock=lambda: NOW,
    )

    fetched = await client.fetch()

    assert {r.ip: r.filter_result for r in fetched.ips}["192.0.2.11"] is FilterResult.RED
    assert dict(fetched.blocked)["192.0.2.11"] is True
    assert [r.path for r in server.requests] == [
        f"/snds/data.aspx?key={SNDS_KEY}",
        f"/snds/ipStatus.aspx?key={SNDS_KEY}",
    ]


@pytest.mark.parametrize("status", [401, 403, 500])
async def test_snds_error_statuses_map_to_kinds_without_the_key(
    serve: Serve, ca_file: Path, status: int
) -> None:
    server = serve(lambda r: Reply(status, b"<html>error</html>"))
    http = FeedHttp(ca_file=ca_file, timeout=10.0)

    with pytest.raises(FeedError) as caught:
        await http.request("GET", f"{server.url}/snds/data.aspx?key={SNDS_KEY}")

    expected = {401: "auth", 403: "permission_denied", 500: "endpoint"}[status]
    assert caught.value.kind.value == expected
    assert SNDS_KEY not in str(caught.value)


async def test_hostile_answers_never_end_the_feed(
    serve: Serve, ca_file: Path, tmp_path: Path
) -> None:
    server = serve(lambda r: Reply(200, b"\x00\xff" * 1000))
    config = validate_config(
        {
            "secret": "0123456789abcdef0123",
            "state_dir": str(tmp_path),
            "routes": [{"name": "r", "host": "127.0.0.1", "from": "p@example.com"}],
            "mailboxes": [
                {
                    "name": "m",
                    "host": "127.0.0.1",
                    "address": "s@example.com",
                    "auth": {"username": "s", "password": "pw"},
                }
            ],
            "reputation": {
                "google": {
                    "domains": ["example.com"],
                    "auth": {"username": "p@example.com", "token_file": str(tmp_path / "tok")},
                    "base_url": server.url,
                    "ca_file": str(ca_file),
                },
                "snds": {
                    "key": SNDS_KEY,
                    "base_url": f"{server.url}/snds",
                    "ca_file": str(ca_file),
                },
            },
        },
        base_dir=tmp_path,
        environ={},
    )
    (tmp_path / "tok").write_text("token-from-file\n")
    recorded: list[object] = []
    from agent.oauth.sources import TokenSources

    feeds = ReputationFeeds(
        record=recorded.append, token_source=TokenSources(state_dir=tmp_path).standalone
    )
    feeds.configure(config.reputation)
    feeds.start()
    try:
        for runner in feeds.runners.values():
            await asyncio.wait_for(runner.fetched.wait(), 30)
    finally:
        await feeds.stop()

    states = {state.feed: state for state in feeds.states()}
    assert states[Feed.POSTMASTER].last_error is FeedErrorKind.MALFORMED
    assert states[Feed.POSTMASTER].last_success is None
    # Binary garbage as CSV: every row skipped and counted, the fetch itself read.
    snds_results = [r for r in recorded if isinstance(r, SndsFetched)]
    assert snds_results and snds_results[0].ips == () and snds_results[0].malformed >= 1
    assert all(SNDS_KEY not in state.last_error_message for state in feeds.states())


async def test_the_agent_runs_the_feeds_into_series_and_a_reload_without_them_drops_them(
    serve: Serve, ca_file: Path, tmp_path: Path
) -> None:
    server = serve(snds)
    base = one_pair_config(tmp_path)
    with_snds = base.model_copy(
        update={
            "reputation": Reputation.model_validate(
                {
                    "snds": {
                        "key": SNDS_KEY,
                        "base_url": f"{server.url}/snds",
                        "ca_file": str(ca_file),
                    }
                }
            )
        }
    )
    registry = new_registry()
    agent = Agent(with_snds, recorder=Recorder(registry))
    value = registry.get_sample_value
    try:
        await agent._declare()
        assert (
            value("deliverability_reputation_feed_errors_total", {"feed": "snds", "kind": "auth"})
            == 0
        )
        agent.reputation.start()  # what schedule() does, without the probe jobs
        await asyncio.wait_for(agent.reputation.runners[Feed.SNDS].fetched.wait(), 30)
        assert (
            value("deliverability_snds_filter_result", {"ip": "192.0.2.11", "result": "red"}) == 1
        )
        assert [s.feed for s in agent.reputation_feeds()] == [Feed.SNDS]
        assert SNDS_KEY.encode() not in exposition(registry)

        await agent.reload(base)

        assert (
            value("deliverability_snds_filter_result", {"ip": "192.0.2.11", "result": "red"})
            is None
        )
        assert (
            value("deliverability_reputation_feed_errors_total", {"feed": "snds", "kind": "auth"})
            is None
        )
        assert agent.reputation_feeds() == []
    finally:
        await agent.reputation.stop()
        agent.ledger.close()


async def test_the_google_feed_signs_in_with_its_own_credential_shown_beside_the_others(
    serve: Serve, ca_file: Path, tmp_path: Path
) -> None:
    server = serve(google)
    (tmp_path / "token").write_text("postmaster-access-token\n")
    config = one_pair_config(tmp_path).model_copy(
        update={
            "reputation": Reputation.model_validate(
                {
                    "google": {
                        "domains": ["example.com"],
                        "auth": {
                            "username": "p@example.com",
                            "token_file": str(tmp_path / "token"),
                        },
                        "base_url": server.url,
                        "ca_file": str(ca_file),
                    }
                }
            )
        }
    )
    registry = new_registry()
    agent = Agent(config, recorder=Recorder(registry))
    try:
        await agent._declare()
        agent.reputation.start()
        await asyncio.wait_for(agent.reputation.runners[Feed.POSTMASTER].fetched.wait(), 30)
    finally:
        await agent.reputation.stop()
        agent.ledger.close()

    assert server.requests[0].headers["authorization"] == "Bearer postmaster-access-token"
    assert [state.credential for state in agent.credentials()] == ["reputation:google"]
    refreshes = "deliverability_oauth_token_refreshes_total"
    assert (
        registry.get_sample_value(refreshes, {"credential": "reputation:google", "result": "ok"})
        == 1
    )
    assert registry.get_sample_value(
        "deliverability_postmaster_spam_ratio", {"domain": "example.com"}
    ) == pytest.approx(0.0021)
