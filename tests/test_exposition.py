"""The fast /metrics renderer writes exactly what prometheus_client writes, in both formats.

Compared with `generate_latest` (text 0.0.4) and `openmetrics.exposition.generate_latest` on one
registry with every metric kind, labels out of order and label values holding backslashes, quotes
and newlines, after values change and after series go; and read back by both parsers while
another thread changes the registry.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import threading
from collections.abc import Callable, Iterable
from typing import cast
from wsgiref.types import WSGIEnvironment

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Metric,
    Summary,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parser
from prometheus_client.parser import text_string_to_metric_families

from agent.monitoring import catalog  # noqa: F401  (switches `_created` series off, as the agent)
from agent.monitoring.exposition import FastExposition, fast_metrics_app

om_parse = cast(Callable[[str], Iterable[Metric]], om_parser)
_parse_text = cast(Callable[[str], Iterable[Metric]], text_string_to_metric_families)
HOSTILE = ("back\\slash", 'a "quoted" value', "two\nlines", "ünïcödé", "", "100% %s %(x)s")


class _Custom:
    """A collector that is not a metric wrapper: rendered by prometheus_client itself."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("custom_thing", "A custom collector.", labels=["k"])
        family.add_metric(["v"], 3.0)
        yield family


def _registry(*, negative_bounds: bool = True) -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("c_things", "Counted \\ things\nwith a \"help\".", ["zeta", "alpha"],
                      registry=registry)  # fmt: skip
    for i, value in enumerate(HOSTILE):
        counter.labels(value, str(i)).inc(i)
    Counter("c_plain_total", "No labels.", registry=registry).inc(2.5)
    gauge = Gauge("g_values", "Gauges.", ["name"], registry=registry)
    for name, number in (
        ("inf", math.inf),
        ("minus_inf", -math.inf),
        ("nan", math.nan),
        ("negative_zero", -0.0),
        ("big", 123456789.0),
        ("huge", 1e20),
        ("tiny", 1e-7),
        ("timestamp", 1765000000.123),
    ):
        gauge.labels(name).set(number)
    Gauge("g_plain", "Unlabelled gauge.", registry=registry).set(7)
    Gauge("g_function", "A gauge read by a function.", registry=registry).set_function(lambda: 42)
    histogram = Histogram(
        "h_seconds", "A histogram.", ["route"], buckets=(0.1, 1.0, 2.5), registry=registry
    )
    observations: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("r1", (0.05, 0.5, 3.0)),
        ('r"2', (1.0,)),
        ("r3", ()),
    )
    observations += (("%s%%", (0.2,)),)
    for route, observed in observations:
        child = histogram.labels(route)
        for seconds in observed:
            child.observe(seconds)
    Histogram("h_plain_seconds", "Unlabelled.", registry=registry).observe(0.3)
    if negative_bounds:  # prometheus_client writes no _sum, which its OpenMetrics parser refuses
        Histogram("h_negative", "No _sum.", buckets=(-1.0, 0.0), registry=registry)
    summary = Summary("s_seconds", "A summary.", ["mailbox", "route"], registry=registry)
    summary.labels("m\\1", "r1").observe(1.5)
    summary.labels("m2", "r1")
    Info("i_build", "An info metric.", registry=registry).info({"version": "1.2"})
    Enum("e_state", "An enum.", states=["a", "b"], registry=registry).state("b")
    registry.register(_Custom())
    return registry, counter, histogram


def _openmetrics(registry: CollectorRegistry) -> bytes:
    return om_exposition.generate_latest(registry)  # type: ignore[no-any-return,no-untyped-call]


def test_fast_exposition_writes_what_prometheus_client_writes_in_both_formats() -> None:
    registry, _, _ = _registry()
    fast = FastExposition(registry)

    assert fast.text() == generate_latest(registry)
    assert fast.openmetrics() == _openmetrics(registry)
    assert b'zeta="back\\\\slash"' in fast.text()  # the hostile values are really there
    assert b'alpha="2",zeta="two\\nlines"' in fast.text()


def test_fast_exposition_follows_changed_values_and_removed_series() -> None:
    registry, counter, histogram = _registry()
    fast = FastExposition(registry)
    fast.text()  # the prefixes are now cached

    counter.labels(HOSTILE[0], "0").inc(5)
    counter.remove(HOSTILE[1], "1")
    histogram.labels("r3").observe(2.0)
    histogram.remove("r1")
    counter.labels("new", "9").inc()

    assert fast.text() == generate_latest(registry)
    assert fast.openmetrics() == _openmetrics(registry)
    assert b'zeta="a \\"quoted\\" value"' not in fast.text()


def test_fast_exposition_is_read_back_by_both_parsers() -> None:
    registry, _, _ = _registry(negative_bounds=False)
    fast = FastExposition(registry)

    text = {f.name: f for f in _parse_text(fast.text().decode())}
    om = {f.name: f for f in om_parse(fast.openmetrics().decode())}

    values = {tuple(sorted(s.labels.items())): s.value for s in text["c_things"].samples}
    assert values[(("alpha", "2"), ("zeta", "two\nlines"))] == 2.0
    assert {s.labels["zeta"] for s in om["c_things"].samples} == set(HOSTILE)


def _app_get(
    app: object, *, accept: str = "", encoding: str = "", query: str = "", method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/metrics",
        "QUERY_STRING": query,
        "HTTP_ACCEPT": accept,
        "HTTP_ACCEPT_ENCODING": encoding,
    }
    answer: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))  # type: ignore[operator]
    return str(answer["status"]), answer["headers"], body  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("accept", "encoding", "query", "method"),
    [
        ("", "", "", "GET"),
        ("", "gzip", "", "GET"),
        ("application/openmetrics-text; version=1.0.0", "", "", "GET"),
        (  # what Prometheus sends
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "gzip",
            "",
            "GET",
        ),
        ("text/plain;version=1.0.0;escaping=allow-utf-8", "", "", "GET"),
        ("", "", "name[]=g_plain&name[]=c_plain_total", "GET"),
        ("", "", "", "POST"),
        ("", "", "", "OPTIONS"),
    ],
)
def test_fast_metrics_app_answers_as_prometheus_clients_app(
    accept: str, encoding: str, query: str, method: str
) -> None:
    registry, _, _ = _registry()
    ours = _app_get(
        fast_metrics_app(registry), accept=accept, encoding=encoding, query=query, method=method
    )
    theirs = _app_get(
        make_wsgi_app(registry), accept=accept, encoding=encoding, query=query, method=method
    )

    assert ours[:2] == theirs[:2]
    if encoding:
        assert ours[1]["Content-Encoding"] == "gzip"
        assert gzip.decompress(ours[2]) == gzip.decompress(theirs[2])
    else:
        assert ours[2] == theirs[2]


def test_a_scrape_while_another_thread_changes_the_registry_reads_whole_lines() -> None:
    registry = CollectorRegistry()
    counter = Counter("churn", "Children come and go.", ["pair"], registry=registry)
    histogram = Histogram("churn_seconds", "Observed meanwhile.", ["pair"], registry=registry)
    fast = FastExposition(registry)
    stop = threading.Event()

    def mutate() -> None:
        i = 0
        while not stop.is_set():
            counter.labels(f"p{i % 500}").inc()
            histogram.labels(f"p{i % 500}").observe(i % 7)
            if i % 3 == 0:
                counter.remove(f"p{(i * 7) % 500}")
                histogram.labels(f"p{(i * 11) % 500}")
                with contextlib.suppress(KeyError):
                    histogram.remove(f"p{(i * 13) % 500}")
            i += 1

    mutator = threading.Thread(target=mutate)
    mutator.start()
    try:
        scrapes = [fast.text() for _ in range(5)] + [fast.openmetrics() for _ in range(5)]
    finally:
        stop.set()
        mutator.join()

    for body in scrapes[:5]:
        families = list(_parse_text(body.decode()))
        assert {f.name for f in families} == {"churn", "churn_seconds"}
    for body in scrapes[5:]:
        assert {f.name for f in om_parse(body.decode())} == {"churn", "churn_seconds"}
    assert fast.text() == generate_latest(registry)
