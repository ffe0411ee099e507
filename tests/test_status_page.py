"""The status page as HTML: matrix, recent probes, health; escaping, no secrets, ledger cost."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app.cli import probe_json
from agent.config import Config, validate_config
from agent.model import (
    Arrival,
    AuthResult,
    AuthVerdicts,
    ErrorKind,
    InboxCategory,
    Outcome,
    ProbeError,
    SendResult,
    SmtpReply,
    SpamCategory,
    SpamSource,
    SpamVerdict,
    Stage,
)
from agent.reputation.feeds import FeedState
from agent.reputation.model import Feed, FeedErrorKind
from agent.secrets import MASK
from agent.store.ledger import Ledger
from agent.web.status_page import WORST_PAIRS, Health, PageData, collect, render

NOW = 1_790_000_000.0
ROUTE_PASSWORD = "route-password-sekret"
SEED_PASSWORD = "seed-password-sekret"
HEALTH = Health(
    version="9.9.9",
    ready=True,
    ready_detail="probing",
    started_at=NOW - 3600,
    config_ok=True,
    config_loaded_at=NOW - 60,
    mailboxes_up={"gmail": True, "m365": False},
    sandbox="SMTP submission 127.0.0.1:2587 (STARTTLS)",
)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    def mailbox(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "host": "imap.example.com",
            "auth": {"username": f"{name}@example.com", "password": SEED_PASSWORD},
            "address": f"{name}@example.com",
        }

    data = {
        "secret": "status-page-test-secret-0123456",
        "routes": [
            {
                "name": name,
                "host": "smtp.example.com",
                "auth": {"username": "probe", "password": ROUTE_PASSWORD},
                "from": "probe@example.com",
            }
            for name in ("primary", "relay")
        ],
        "mailboxes": [mailbox("gmail"), mailbox("m365")],
        "probes": {
            "pairs": [
                {"route": "primary", "mailbox": "gmail"},
                {"route": "primary", "mailbox": "m365"},
                {"route": "relay", "mailbox": "gmail"},
            ]
        },
    }
    return validate_config(data, base_dir=tmp_path, environ={})


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        yield ledger


def _reply(stage: Stage, code: int, text: str) -> SmtpReply:
    enhanced = text.split()[0] if text[:1].isdigit() else None
    return SmtpReply(stage, code, enhanced, text)


def _probe(
    ledger: Ledger,
    probe_id: str,
    route: str,
    mailbox: str,
    *,
    at: float,
    transcript: tuple[SmtpReply, ...],
    accepted: bool = True,
    error: ProbeError | None = None,
    outcome: Outcome | None = None,
    folder: str | None = None,
    auth: AuthVerdicts | None = None,
    spam: tuple[SpamVerdict, ...] = (),
) -> None:
    ledger.record_sending(
        probe_id=probe_id, route=route, mailbox=mailbox, created_at=at, deadline_at=at + 600
    )
    ledger.record_send_result(
        probe_id,
        SendResult(
            transcript=transcript,
            accepted=accepted,
            accepted_at=at + 1 if accepted else None,
            duration_seconds=1.0,
            error=error,
            tls_version="TLSv1.3",
        ),
    )
    if outcome is not None:
        arrival = (
            Arrival(probe_id, mailbox, folder, outcome, at + 5, auth or AuthVerdicts(), spam=spam)
            if folder
            else None
        )
        ledger.finalize(
            probe_id,
            outcome=outcome,
            finished_at=at + 5,
            latency_seconds=4.0 if folder else None,
            arrival=arrival,
        )


ACCEPTED = (
    _reply(Stage.BANNER, 220, "smtp.example.com ESMTP"),
    _reply(Stage.END_OF_DATA, 250, "2.0.0 Ok: queued"),
)


@pytest.fixture
def page_data(ledger: Ledger, config: Config) -> PageData:
    _probe(
        ledger,
        "old-inbox",
        "primary",
        "gmail",
        at=NOW - 900,
        transcript=ACCEPTED,
        outcome=Outcome.SPAM,
        folder="Junk",
    )
    _probe(
        ledger,
        "new-inbox",
        "primary",
        "gmail",
        at=NOW - 300,
        transcript=ACCEPTED,
        outcome=Outcome.INBOX,
        folder="INBOX",
        auth=AuthVerdicts(spf=AuthResult.PASS, dkim=AuthResult.PASS, dmarc=AuthResult.FAIL),
        spam=(SpamVerdict(SpamSource.RSPAMD, 2.0, 15.0, False, SpamCategory.HAM),),
    )
    _probe(
        ledger,
        "hostile",
        "primary",
        "m365",
        at=NOW - 200,
        transcript=(
            _reply(Stage.BANNER, 220, "<script>alert('x')</script> & friends"),
            _reply(Stage.RCPT, 550, f"5.7.1 password {ROUTE_PASSWORD} refused"),
        ),
        accepted=False,
        outcome=Outcome.REJECTED,
    )
    _probe(
        ledger,
        "in-flight",
        "relay",
        "gmail",
        at=NOW - 10,
        transcript=ACCEPTED,
    )
    _probe(
        ledger,
        "unconfigured",
        "relay",
        "m365",
        at=NOW - 5,
        transcript=(),
        accepted=False,
        error=ProbeError(Stage.CONNECT, ErrorKind.CONNECT, "connection refused"),
        outcome=Outcome.ERROR,
    )
    return collect(ledger, config, HEALTH, now=NOW)


def _cells(page: str) -> dict[tuple[str, str], str]:
    return {
        (route, mailbox): outcome
        for route, mailbox, outcome in re.findall(
            r'<td data-route="([^"]*)" data-mailbox="([^"]*)"(?: data-outcome="([^"]*)")?', page
        )
    }


def test_status_page_matrix_shows_the_latest_probe_of_each_configured_pair(
    page_data: PageData,
) -> None:
    page = render(page_data)
    assert _cells(page) == {
        ("primary", "gmail"): "inbox",
        ("primary", "m365"): "rejected",
        ("relay", "gmail"): "awaiting",
        ("relay", "m365"): "",  # not a configured pair: not probed
    }
    assert "not probed" in page
    matrix = page[page.index('id="matrix"') : page.index("Recent probes")]
    assert "in INBOX" in matrix and "4.0 s" in matrix and "5 min ago" in matrix
    assert "550 5.7.1 at rcpt" in matrix
    assert "Latest outcomes: 1 inbox, 1 rejected." in page


def test_status_page_recent_probes_newest_first_with_transcript_and_verdicts(
    page_data: PageData,
) -> None:
    page = render(page_data)
    order = re.findall(r'<tr data-probe="([^"]+)">', page)
    assert order == ["unconfigured", "in-flight", "hostile", "new-inbox", "old-inbox"]
    row = page[page.index('data-probe="new-inbox"') :].split("</tr>", 1)[0]
    assert "spf=pass dkim=pass dmarc=fail" in row
    assert "<td>rspamd ham 2/15</td>" in row  # the receiver's spam filter
    assert "<details><summary>SMTP transcript</summary>" in row
    assert "end_of_data  250 2.0.0 Ok: queued" in row
    assert "TLS: TLSv1.3" in row
    error_row = page[page.index('data-probe="unconfigured"') :].split("</tr>", 1)[0]
    assert "error at connect (connect): connection refused" in error_row


def test_status_page_escapes_server_text_and_blanks_secrets(page_data: PageData) -> None:
    page = render(page_data, secrets=[ROUTE_PASSWORD, SEED_PASSWORD])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    assert ROUTE_PASSWORD not in page and SEED_PASSWORD not in page
    assert f"password {MASK} refused" in page


def test_status_page_shows_agent_health(page_data: PageData) -> None:
    page = render(page_data)
    health = page[page.index('<dl id="health">') :]
    assert "deliverability-agent 9.9.9, up 60 min" in health
    assert '<span class="up">ready</span> (probing)' in health
    assert "3 pair(s) every 300 s; 1 in flight" in health
    assert '<dt>IMAP gmail</dt><dd><span class="up">connected</span>' in health
    assert '<dt>IMAP m365</dt><dd><span class="down">down</span>' in health
    assert "SMTP submission 127.0.0.1:2587 (STARTTLS)" in health


def test_status_page_refreshes_itself_unless_paused(page_data: PageData) -> None:
    assert '<meta http-equiv="refresh" content="10">' in render(page_data)
    assert 'http-equiv="refresh"' not in render(page_data, refresh_seconds=0)


def test_status_page_and_once_json_render_an_old_row_holding_bytes_that_are_not_utf8(
    ledger: Ledger, config: Config, tmp_path: Path
) -> None:
    _probe(
        ledger,
        "old-row",
        "primary",
        "gmail",
        at=NOW - 60,
        transcript=(_reply(Stage.RCPT, 550, "5.7.1 placeholder"),),
        accepted=False,
        error=ProbeError(Stage.RCPT, ErrorKind.PROTOCOL, "placeholder"),
        outcome=Outcome.REJECTED,
    )
    # What agents before the fix wrote: aiosmtplib's lone surrogates, as json.dumps escapes them.
    reply = {"stage": "rcpt", "code": 550, "enhanced_code": "5.7.1", "text": "caf\udce9 \udcff"}
    error = {"stage": "rcpt", "kind": "protocol", "message": "protocol error: \udcff"}
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn, conn:
        conn.execute(
            "UPDATE probes SET transcript = ?, send_error = ? WHERE probe_id = 'old-row'",
            (json.dumps([reply]), json.dumps(error)),
        )

    record = ledger.get("old-row")
    assert record is not None
    assert record.transcript[0].text == "caf\\xe9 \\xff"
    assert record.send_error is not None
    assert record.send_error.message == "protocol error: \\xff"
    page = render(collect(ledger, config, HEALTH, now=NOW))
    page.encode("utf-8")  # raises on a lone surrogate
    assert "rcpt         550 caf\\xe9 \\xff" in page
    json.dumps(probe_json(record), ensure_ascii=False).encode("utf-8")


def test_status_page_of_an_empty_ledger(ledger: Ledger, config: Config) -> None:
    page = render(collect(ledger, config, HEALTH, now=NOW))
    assert "No probes yet." in page
    assert "No finished probe yet." in page
    assert set(_cells(page).values()) == {""}


def test_status_page_latest_by_pair_breaks_ties_like_the_full_scan(ledger: Ledger) -> None:
    # Many probes, several created at the same instant: the indexed per-pair lookup the page
    # uses must pick exactly what the scan over every probe picks.
    for index in range(300):
        route, mailbox = f"r{index % 3}", f"m{index % 2}"
        ledger.record_sending(
            probe_id=f"p{index:04d}",
            route=route,
            mailbox=mailbox,
            created_at=NOW + index // 12,
            deadline_at=NOW + 600,
        )
    pairs = [(f"r{r}", f"m{m}") for r in range(3) for m in range(2)] + [("none", "none")]
    seek = {pair: record.probe_id for pair, record in ledger.latest_by_pair(pairs).items()}
    scan = {pair: record.probe_id for pair, record in ledger.latest_by_pair().items()}
    assert seek == scan
    assert len(seek) == 6


def test_status_page_shows_a_probe_cut_by_a_restart_waiting_then_its_error(
    ledger: Ledger, config: Config
) -> None:
    ledger.record_sending(
        probe_id="cut", route="primary", mailbox="gmail", created_at=NOW - 60, deadline_at=NOW + 9
    )
    ledger.mark_interrupted("cut", at=NOW - 30)
    waiting = render(collect(ledger, config, HEALTH, now=NOW))
    assert _cells(waiting)[("primary", "gmail")] == "interrupted, awaiting"
    ledger.finalize("cut", outcome=Outcome.ERROR, finished_at=NOW + 9)
    ended = render(collect(ledger, config, HEALTH, now=NOW + 10))
    assert _cells(ended)[("primary", "gmail")] == "error"
    assert "interrupted by a restart mid-transaction" in ended


def test_status_page_and_once_json_show_the_gmail_tab_of_an_inbox_probe(
    ledger: Ledger, config: Config
) -> None:
    _probe(ledger, "tabbed", "primary", "gmail", at=NOW - 60, transcript=ACCEPTED)
    arrival = Arrival(
        "tabbed", "gmail", "INBOX", Outcome.INBOX, NOW - 55, category=InboxCategory.PROMOTIONS
    )
    ledger.finalize(
        "tabbed", outcome=Outcome.INBOX, finished_at=NOW - 55, latency_seconds=4.0, arrival=arrival
    )
    page = render(collect(ledger, config, HEALTH, now=NOW))
    assert _cells(page)[("primary", "gmail")] == "inbox"  # the outcome itself is unchanged
    matrix = page[page.index('id="matrix"') : page.index("Recent probes")]
    assert '<span class="badge o-inbox">inbox (promotions)</span>' in matrix
    row = page[page.index('data-probe="tabbed"') :].split("</tr>", 1)[0]
    assert "inbox (promotions)" in row
    record = ledger.get("tabbed")
    assert record is not None and probe_json(record)["category"] == "promotions"


def test_status_page_lists_the_worst_pairs_instead_of_a_matrix_too_big_to_read(
    ledger: Ledger,
) -> None:
    routes = tuple(f"r{index:02d}" for index in range(25))
    mailboxes = tuple(f"m{index:02d}" for index in range(20))  # 500 cells: over the bound
    pairs = frozenset((route, mailbox) for route in routes for mailbox in mailboxes)
    for probe_id, mailbox, outcome, folder in (
        ("inbox-1", "m00", Outcome.INBOX, "INBOX"),
        ("missing", "m01", Outcome.MISSING, None),
        ("error", "m02", Outcome.ERROR, None),
        ("spam", "m03", Outcome.SPAM, "Junk"),
    ):
        _probe(
            ledger,
            probe_id,
            "r00",
            mailbox,
            at=NOW - 60,
            transcript=ACCEPTED,
            outcome=outcome,
            folder=folder,
        )
    data = PageData(
        routes=routes,
        mailboxes=mailboxes,
        pairs=pairs,
        interval_seconds=300,
        latest=ledger.latest_by_pair(sorted(pairs)),
        recent=(),
        in_flight=0,
        health=HEALTH,
        now=NOW,
    )
    page = render(data)
    assert 'id="matrix"' not in page
    listed = re.findall(
        r'<tr data-route="([^"]*)" data-mailbox="([^"]*)" data-outcome="([^"]*)"', page
    )
    assert len(listed) == WORST_PAIRS
    # Worst first: no verdict, then missing, then spam; the pairs with no probe yet; inbox last.
    assert listed[:3] == [
        ("r00", "m02", "error"),
        ("r00", "m01", "missing"),
        ("r00", "m03", "spam"),
    ]
    assert ("r00", "m00", "inbox") not in listed  # 496 pairs without a probe rank before it
    assert "500 pairs: more than the 400 cells a matrix shows" in page


def test_status_page_shows_each_reputation_feed_and_its_last_error(page_data: PageData) -> None:
    feeds = (
        FeedState(Feed.POSTMASTER, last_success=NOW - 7200, next_fetch=NOW + 3600),
        FeedState(
            Feed.SNDS,
            last_error=FeedErrorKind.QUOTA,
            last_error_message="https://sendersupport.example/snds/data.aspx is rate limiting "
            "(HTTP 429) snds-key-sekret",
            failures=2,
        ),
    )
    data = dataclasses.replace(
        page_data, health=dataclasses.replace(page_data.health, reputation=feeds)
    )

    page = render(data, secrets=["snds-key-sekret"])

    section = page[page.index('<table id="reputation">') :]
    assert "<td>postmaster</td>" in section and "2.0 h ago" in section
    assert "quota" in section and "rate limiting" in section
    assert "snds-key-sekret" not in page
    assert "Reputation feeds" not in render(page_data)
