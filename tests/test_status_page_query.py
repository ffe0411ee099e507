"""The status page's filter and pagination: `/?route=&mailbox=&outcome=&page=`, worst pairs
first, bad parameters said on the page, and work per request bounded by the page size."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, validate_config
from agent.model import Outcome, SendResult, SmtpReply, Stage
from agent.store.ledger import Ledger, ProbeRecord
from agent.web.status_page import (
    PAGE_SIZE,
    Health,
    LoopPage,
    PageQuery,
    collect,
    collect_in_steps,
    render,
)

NOW = 1_790_000_000.0
HEALTH = Health("9.9.9", True, "probing", NOW - 3600, True, NOW - 60)
ROUTES = tuple(f"r{index:02d}" for index in range(25))
MAILBOXES = tuple(f"m{index:02d}" for index in range(20))  # 500 pairs: five pages
ACCEPTED = (
    SmtpReply(Stage.BANNER, 220, None, "smtp.example.com ESMTP"),
    SmtpReply(Stage.END_OF_DATA, 250, "2.0.0", "2.0.0 Ok: queued"),
)


def _config(tmp_path: Path, routes: Iterable[str], mailboxes: Iterable[str]) -> Config:
    data: dict[str, Any] = {
        "secret": "status-page-test-secret-0123456",
        "routes": [
            {
                "name": name,
                "host": "smtp.example.com",
                "auth": {"username": "probe", "password": "route-password"},
                "from": "probe@example.com",
            }
            for name in routes
        ],
        "mailboxes": [
            {
                "name": name,
                "host": "imap.example.com",
                "auth": {"username": f"{name}@example.com", "password": "seed-password"},
                "address": f"{name}@example.com",
            }
            for name in mailboxes
        ],
    }
    return validate_config(data, base_dir=tmp_path, environ={})


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return _config(tmp_path, ROUTES, MAILBOXES)


class CountingLedger(Ledger):
    """A ledger that notes how many full probes each latest_by_pair call decoded."""

    decoded: list[int]

    def latest_by_pair(
        self, pairs: Iterable[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str], ProbeRecord]:
        found = super().latest_by_pair(pairs)
        self.decoded.append(len(found))
        return found


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[CountingLedger]:
    with CountingLedger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.decoded = []
        yield ledger


def _probe(
    ledger: Ledger, probe_id: str, route: str, mailbox: str, outcome: Outcome | None
) -> None:
    at = NOW - 60
    ledger.record_sending(
        probe_id=probe_id, route=route, mailbox=mailbox, created_at=at, deadline_at=at + 600
    )
    ledger.record_send_result(
        probe_id,
        SendResult(transcript=ACCEPTED, accepted=True, accepted_at=at + 1, duration_seconds=1.0),
    )
    if outcome is not None:
        ledger.finalize(probe_id, outcome=outcome, finished_at=at + 5)


def _every_pair_probed(ledger: Ledger) -> None:
    """Every pair inbox, but a few: one error, one missing, one spam, one in flight."""
    special = {
        ("r03", "m04"): Outcome.ERROR,
        ("r07", "m01"): Outcome.MISSING,
        ("r00", "m19"): Outcome.SPAM,
        ("r10", "m10"): None,
    }
    for route in ROUTES:
        for mailbox in MAILBOXES:
            outcome = special.get((route, mailbox), Outcome.INBOX)
            _probe(ledger, f"{route}-{mailbox}", route, mailbox, outcome)


def _listed(page: str) -> list[tuple[str, str, str]]:
    return re.findall(
        r'<tr data-route="([^"]*)" data-mailbox="([^"]*)" data-outcome="([^"]*)"', page
    )


def _page(ledger: Ledger, config: Config, query: str) -> str:
    return render(collect(ledger, config, HEALTH, now=NOW, query=PageQuery.parse(query)))


def _links(page: str) -> dict[str, str]:
    return {
        rel: html.unescape(href)
        for rel, href in re.findall(r'<a rel="(prev|next)" href="([^"]*)"', page)
    }


# --- the query ------------------------------------------------------------------------------------


def test_page_query_reads_filters_page_and_refresh() -> None:
    query = PageQuery.parse("route=r01&mailbox=m%20x&outcome=missing&page=3&refresh=0")
    assert query == PageQuery(route="r01", mailbox="m x", outcome="missing", page=3, refresh=False)
    assert query.filtered
    assert PageQuery.parse("") == PageQuery()
    assert PageQuery.parse("outcome=in_flight").outcome == "in_flight"
    assert PageQuery.parse("outcome=no_probe").outcome == "no_probe"


def test_page_query_ignores_bad_parameters_naming_each_and_what_was_expected() -> None:
    query = PageQuery.parse(f"page=abc&outcome=lost&colour=red&route={'x' * 300}")
    assert (query.page, query.outcome, query.route) == (1, None, None)
    assert query.problems == (
        "route: expected a configured name, got 300 characters",
        "outcome: expected one of inbox, spam, other, missing, rejected, bounced, deferred, "
        "error, in_flight, no_probe",
        "page: expected a whole number from 1",
        "colour: unknown parameter (route, mailbox, outcome, page)",
    )
    assert PageQuery.parse("&".join(f"f{n}=1" for n in range(50))) == PageQuery(
        problems=("the query: expected at most 20 parameters",)
    )
    assert PageQuery.parse("page=0").page == 1
    assert PageQuery.parse("page=-2").problems == ("page: expected a whole number from 1",)
    assert PageQuery.parse("page=99999999999").problems == ("page: expected a whole number from 1",)


def test_page_query_links_keep_the_filters_and_leave_page_one_unsaid() -> None:
    query = PageQuery(route="r 1", outcome="spam", page=2, refresh=False)
    assert query.link(page=3) == "/?route=r+1&outcome=spam&page=3&refresh=0"
    assert query.link(page=1) == "/?route=r+1&outcome=spam&refresh=0"
    assert PageQuery().link() == "/"


# --- the page -------------------------------------------------------------------------------------


def test_status_page_lists_the_first_page_of_pairs_worst_first_with_a_next_link(
    ledger: CountingLedger, config: Config
) -> None:
    _every_pair_probed(ledger)
    page = _page(ledger, config, "")
    listed = _listed(page)
    assert len(listed) == PAGE_SIZE
    assert listed[:4] == [
        ("r03", "m04", "error"),
        ("r07", "m01", "missing"),
        ("r00", "m19", "spam"),
        ("r10", "m10", "awaiting"),
    ]
    assert "1-100 of 500 pairs, worst first" in page
    assert "page 1 of 5" in page
    assert _links(page) == {"next": "/?page=2"}
    # The summary counts every configured pair, not only the page shown.
    assert "Latest outcomes: 496 inbox, 1 spam, 1 missing, 1 error." in page


def test_status_page_later_pages_continue_the_ranking_and_the_last_has_no_next(
    ledger: CountingLedger, config: Config
) -> None:
    _every_pair_probed(ledger)
    first = _listed(_page(ledger, config, ""))
    second_page = _page(ledger, config, "page=2")
    second = _listed(second_page)
    assert len(second) == PAGE_SIZE and not set(first) & set(second)
    assert _links(second_page) == {"prev": "/", "next": "/?page=3"}
    last_page = _page(ledger, config, "page=5")
    assert _links(last_page) == {"prev": "/?page=4"}
    everything = first + second
    for number in (3, 4, 5):
        everything += _listed(_page(ledger, config, f"page={number}"))
    assert len(set(everything)) == 500  # every pair once over the five pages


def test_status_page_past_the_last_page_shows_the_last_and_says_so(
    ledger: CountingLedger, config: Config
) -> None:
    _every_pair_probed(ledger)
    page = _page(ledger, config, "page=40")
    assert "page 5 of 5" in page
    assert "page: there are 5 page(s); showing the last" in page


def test_status_page_filters_by_route_mailbox_and_outcome(
    ledger: CountingLedger, config: Config
) -> None:
    _every_pair_probed(ledger)
    by_route = _listed(_page(ledger, config, "route=r07"))
    assert len(by_route) == len(MAILBOXES) and {r for r, _, _ in by_route} == {"r07"}
    assert by_route[0] == ("r07", "m01", "missing")
    by_mailbox = _listed(_page(ledger, config, "mailbox=m04"))
    assert len(by_mailbox) == len(ROUTES) and by_mailbox[0] == ("r03", "m04", "error")
    assert _listed(_page(ledger, config, "outcome=spam")) == [("r00", "m19", "spam")]
    assert _listed(_page(ledger, config, "outcome=in_flight")) == [("r10", "m10", "awaiting")]
    assert _listed(_page(ledger, config, "route=r07&outcome=inbox"))[0][2] == "inbox"
    assert _listed(_page(ledger, config, "route=r07&mailbox=m01&outcome=inbox")) == []
    assert "0 of 0 matching pairs" in _page(ledger, config, "route=r07&mailbox=m01&outcome=inbox")


def test_status_page_filter_by_no_probe_lists_the_pairs_never_probed(
    ledger: CountingLedger, config: Config
) -> None:
    _probe(ledger, "one", "r00", "m00", Outcome.INBOX)
    page = _page(ledger, config, "outcome=no_probe&route=r00")
    listed = _listed(page)
    assert len(listed) == len(MAILBOXES) - 1 and ("r00", "m00", "inbox") not in listed
    assert "1-19 of 19 matching pairs" in page


def test_status_page_says_which_filter_names_no_configured_route_or_mailbox(
    ledger: CountingLedger, config: Config
) -> None:
    page = _page(ledger, config, "route=nope&mailbox=<b>x</b>&page=zz")
    assert _listed(page) == []
    problems = re.search(r'<ul class="down" id="query-problems">(.*?)</ul>', page)
    assert problems is not None
    assert "route: no such route in the configuration" in problems[1]
    assert "mailbox: no such seed mailbox in the configuration" in problems[1]
    assert "page: expected a whole number from 1" in problems[1]
    assert "<b>x</b>" not in page  # the value is escaped wherever it is shown


def test_status_page_decodes_full_probes_for_the_shown_page_only(
    ledger: CountingLedger, config: Config
) -> None:
    _every_pair_probed(ledger)
    _page(ledger, config, "page=2")
    assert ledger.decoded == [PAGE_SIZE]  # the ranking read outcomes only, for 500 pairs


def test_status_page_of_a_small_config_keeps_the_matrix_and_a_filter_turns_it_into_a_list(
    ledger: CountingLedger, tmp_path: Path
) -> None:
    small = _config(tmp_path, ("r00", "r01"), ("m00", "m01"))
    _probe(ledger, "bad", "r01", "m00", Outcome.REJECTED)
    plain = _page(ledger, small, "")
    assert 'id="matrix"' in plain and 'id="pair-filter"' in plain
    filtered = _page(ledger, small, "mailbox=m00")
    assert 'id="matrix"' not in filtered
    assert _listed(filtered) == [("r01", "m00", "rejected"), ("r00", "m00", "")]


def test_status_page_filter_form_keeps_the_paused_refresh_and_marks_the_chosen_values(
    ledger: CountingLedger, config: Config
) -> None:
    page = _page(ledger, config, "route=r02&outcome=missing&refresh=0")
    form = re.search(r'<form id="pair-filter" method="get" action="/">(.*?)</form>', page)
    assert form is not None
    assert '<option value="r02" selected>' in form[1]
    assert '<option value="missing" selected>' in form[1]
    assert '<input type="hidden" name="refresh" value="0">' in form[1]
    assert '<meta http-equiv="refresh"' not in page


async def test_loop_page_hands_the_url_query_to_the_build() -> None:
    import asyncio

    asked: list[PageQuery] = []

    def build(query: PageQuery) -> str:
        asked.append(query)
        return "ok"

    page = LoopPage(asyncio.get_running_loop(), build)
    await asyncio.to_thread(lambda: page(refresh=False, query="route=r1&page=2"))
    assert asked == [PageQuery(route="r1", page=2, refresh=False)]


def test_latest_outcomes_agree_with_latest_by_pair_ties_and_probes_in_flight_included(
    ledger: CountingLedger,
) -> None:
    ledger.record_sending(
        probe_id="a-old", route="r00", mailbox="m00", created_at=NOW - 100, deadline_at=NOW
    )
    ledger.finalize("a-old", outcome=Outcome.SPAM, finished_at=NOW - 90)
    for probe_id, outcome in (("b-tie", Outcome.MISSING), ("c-tie", Outcome.INBOX)):
        ledger.record_sending(
            probe_id=probe_id, route="r00", mailbox="m01", created_at=NOW - 50, deadline_at=NOW
        )
        ledger.finalize(probe_id, outcome=outcome, finished_at=NOW - 40)
    _probe(ledger, "d-open", "r01", "m00", None)
    pairs = [("r00", "m00"), ("r00", "m01"), ("r01", "m00"), ("r01", "m01")]
    latest = ledger.latest_by_pair(pairs)
    assert ledger.latest_outcomes(pairs) == {
        pair: (record.outcome, record.created_at) for pair, record in latest.items()
    }
    assert ledger.latest_outcomes(pairs)[("r00", "m01")] == (Outcome.INBOX, NOW - 50)
    assert ledger.latest_outcomes(pairs)[("r01", "m00")] == (None, NOW - 60)
    assert ("r01", "m01") not in ledger.latest_outcomes(pairs)
    assert ledger.latest_outcomes([]) == {}


@pytest.mark.parametrize("query", ["", "page=3", "route=r07&outcome=missing", "outcome=inbox"])
async def test_the_page_built_in_steps_is_the_page_built_at_once(
    ledger: CountingLedger, config: Config, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    _every_pair_probed(ledger)
    monkeypatch.setattr("agent.web.status_page.STEP_PAIRS", 64)  # 500 pairs: eight steps
    read: list[int] = []
    latest_outcomes = ledger.latest_outcomes

    def counted(pairs: Iterable[tuple[str, str]]) -> Any:
        wanted = list(pairs)
        read.append(len(wanted))
        return latest_outcomes(wanted)

    monkeypatch.setattr(ledger, "latest_outcomes", counted)
    asked = PageQuery.parse(query)
    stepped = await collect_in_steps(ledger, config, HEALTH, now=NOW, query=asked)
    assert read == [64] * 7 + [52]  # every pair ranked, no step over 64 pairs
    assert render(stepped) == render(collect(ledger, config, HEALTH, now=NOW, query=asked))
