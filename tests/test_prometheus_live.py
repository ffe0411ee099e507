"""Proof against a real Prometheus: Debian's `prometheus` scrapes a `deliverability-agent run` that
probes the real mail system, with the shipped rule files loaded; then every dashboard panel query
and every recording and alerting rule is evaluated through the HTTP API.

The scenario produces inbox, spam, rejected, deferred and error outcomes (with SMTP bounces, an
AUTH error and a TLS error) within seconds: the agent probes every 10 s, Prometheus scrapes and
evaluates every second. Its DNS checks ask the mail system's NSD about the test zones: bad.test's
SPF does not authorise its route's sending IP and it has no DKIM key, that IP (127.0.0.2) has no
PTR, and both are on the local blocklist zone. Panels that only rare events feed are listed below
with the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.agent_setup import BAD_SENDER, AgentSetup
from tests.mailsystem import MailSystem
from tests.mailsystem.configs import DNSBL_ZONE
from tests.mailsystem.system import free_ports
from tests.mailsystem.topology import BAD_DOMAIN, DKIM_SELECTOR, GOOD_DOMAIN, SEED_DOMAIN
from tests.monitoring_inventory import (
    PROMETHEUS_DIR,
    RULE_FILES,
    PanelQuery,
    dashboard_files,
    panel_queries,
    rules,
    variables,
)
from tests.promql import label_values_selector

pytestmark = pytest.mark.mailsystem

PROMETHEUS = "/usr/bin/prometheus"
WAIT = 90.0  # bound on every wait; nothing passes or fails on timing
OUTCOMES = ("inbox", "spam", "rejected", "deferred", "error")
# Grafana's variables as the panels would get them with "All" selected and a 10 minute range.
SUBSTITUTIONS = {
    '"$route"': '".*"',
    '"$mailbox"': '".*"',
    '"$provider"': '".*"',
    "$__rate_interval": "2m",
    "$__range": "10m",
}

PAIRS = [
    ("good", "seed"),  # inbox, SPF/DKIM/DMARC pass
    ("bad", "seed"),  # spam: SPF and DMARC fail
    ("good", "refuses"),  # rejected: 550 5.7.1 at RCPT, a hard SMTP bounce
    ("good", "defers"),  # deferred: 451 4.7.1 at RCPT, a soft SMTP bounce
    ("wrongpass", "seed"),  # error: auth
    ("tls-mismatch", "seed"),  # error: tls (STARTTLS against the implicit-TLS port)
]
SCENARIO_LABELS = {
    "route": {route for route, _ in PAIRS},
    "mailbox": {mailbox for _, mailbox in PAIRS},
    "provider": {"other"},  # the scenario's seed mailboxes name no provider
}
# The sending IPs the routes declare for the DNS checks (mail really leaves from 127.0.0.1; the
# checks only read DNS): 127.0.0.1 is authorised, unlisted and confirms forward; 127.0.0.2 is not.
SENDING_IPS = {"good": "127.0.0.1", "bad": "127.0.0.2"}
# Alerts whose condition the scenario makes true (pending: their `for:` is minutes), keyed by
# ALERT_KEYS; and alerts about the agent that must stay quiet.
ALERT_KEYS = ("route", "mailbox", "kind", "method", "target", "zone", "check")


def _alert(name: str, **labels: str) -> tuple[str, ...]:
    assert set(labels) <= set(ALERT_KEYS), labels
    return (name, *(labels.get(key, "") for key in ALERT_KEYS))


EXPECTED_ALERTS = {
    _alert("DeliverabilitySpamPlacementHigh", route="bad", mailbox="seed"),
    _alert("DeliverabilityInboxPlacementLow", route="bad", mailbox="seed"),
    _alert("DeliverabilityAuthenticationFailing", route="bad", mailbox="seed", method="dmarc"),
    _alert("DeliverabilityAuthenticationFailing", route="bad", mailbox="seed", method="spf"),
    _alert("DeliverabilityBounceRateHigh", route="good"),
    _alert("DeliverabilityRouteTlsOrAuthErrors", route="wrongpass", kind="auth"),
    _alert("DeliverabilitySendingIpBlocklisted", target="127.0.0.2", zone=DNSBL_ZONE),
    _alert("DeliverabilitySendingIpBlocklisted", target=BAD_DOMAIN, zone=DNSBL_ZONE),
}
# Exactly these: bad.test's informational checks (mta_sts, tls_rpt, dmarc_reporting) and
# 127.0.0.2's rdns fail too, and must not fire it.
DNS_RECORD_BROKEN = {
    _alert("DeliverabilityDnsRecordBroken", target=BAD_DOMAIN, check="spf_authorized"),
    _alert("DeliverabilityDnsRecordBroken", target=BAD_DOMAIN, check="dkim"),
    _alert("DeliverabilityDnsRecordBroken", target="127.0.0.2", check="fcrdns"),
}
QUIET_ALERTS = {
    "DeliverabilityAgentAbsent",
    "DeliverabilityConfigReloadFailed",
    "DeliverabilityImapMailboxUnreachable",
    "DeliverabilityProbesStale",
    "DeliverabilityDnsChecksFailing",
    "DeliverabilityLedgerNotWritable",
}

# Panels that return no series at all in this scenario, and why.
NOT_FED: dict[str, str] = {
    "Deliverability overview / Gmail inbox tabs": (
        "Dovecot has no X-GM-EXT-1, so no probe has a tab; tests/test_gmail_categories.py and "
        "tests/test_service_watchers.py feed it from a scripted Gmail-like server"
    ),
    **{
        f"Deliverability overview / {title}": (
            "the live scenario has no report mailbox, and a report's counts reach a new series "
            "5 minutes after its zero; tests/test_reports_mailsystem.py reads real reports from "
            "the mail system and deploy/prometheus/tests/reports.test.yml runs these queries' "
            "alerts"
        )
        for title in (
            "DMARC-failing share per domain",
            "DMARC messages by source IP and result (2 days)",
            "TLS-RPT failing share per policy domain",
            "TLS-RPT sessions by result (2 days)",
            "Reports read by kind and result",
            "Newest report's period ended",
        )
    },
    "Deliverability overview / Late probes": (
        "a pair's series appears with its first late probe (the series budget), which arrives "
        "after its deadline; tests/test_probe_loop.py holds mail for that"
    ),
    **{
        f"Deliverability overview / {title}": (
            "the live scenario configures no reputation feed (Google's and Microsoft's services "
            "do not run locally); tests/test_reputation_feeds.py feeds them from a scripted HTTPS "
            "server and deploy/prometheus/tests/reputation.test.yml runs their alerts"
        )
        for title in (
            "Gmail user-reported spam rate per domain",
            "Gmail authentication and TLS per domain",
            "Gmail compliance needing work and delivery errors",
            "SNDS per IP: filter result, complaints, traps, blocks",
            "Reputation feeds: time since last read",
            "Reputation feed errors by kind",
        )
    },
    "Deliverability overview / OAuth token requests": (
        "the scenario's routes and mailboxes sign in with passwords; tests/test_oauth_sources.py "
        "and tests/test_oauth_wiring.py feed the series from a scripted token endpoint, and the "
        "promtool tests of DeliverabilityOAuthTokenRefreshFailing a failing credential"
    ),
    # The live scenario's routes have no `esp` section, so no webhook series exist.
    "Deliverability route / ESP events by type": (
        "no route of the live run is an ESP; tests/test_esp_mailsystem.py posts events over HTTP"
    ),
    "Deliverability route / Webhook refusals by reason": (
        "no route of the live run is an ESP; tests/test_webhooks_http.py refuses real posts"
    ),
    "Deliverability route / ESP delivery p95 (250 to delivered by the ESP)": (
        "no route of the live run is an ESP; tests/test_esp_matching.py observes the stage"
    ),
    "Deliverability route / Suppression drops and complaints": (
        "no route of the live run is an ESP; tests/test_esp_matching.py counts both"
    ),
}
# Panels whose series are all 0 here: the events they count are rare, or over by the time the
# queries run, or 0 is what the panel lists. Their queries still run against real series.
ALL_ZERO_OK: dict[str, str] = {
    "Deliverability overview / Probes without a trusted verdict": (
        "rspamd stamps every probe here; tests/test_prometheus_rules.py and the promtool tests "
        "of DeliverabilityAuthResultsAbsent feed a receiver that stopped"
    ),
    "Deliverability overview / Probes in flight now": "every probe may have finished by then",
    "Deliverability overview / Probes in flight per pair": "every probe may have finished by then",
    "Deliverability overview / Missing probes per route and mailbox": (
        "a probe goes missing only after its deadline (minutes in production); "
        "tests/test_probe_loop.py reproduces it"
    ),
    "Deliverability overview / IMAP errors, forged and malformed messages": (
        "the seed mailboxes are healthy and hold no forged or malformed mail"
    ),
    "Deliverability overview / Failing DNS checks by target": (
        "it lists the failing checks, whose value is 0 by definition"
    ),
    "Deliverability overview / SPF DNS lookups per domain": (
        "good.test and bad.test publish ip4-only SPF records (0 lookups); "
        "tests/test_dns_checks.py counts 12 for broken-spf.test"
    ),
    "Deliverability overview / Undecided DNS checks by check": (
        "the test's NSD answers every lookup; tests/test_dns_checks.py leaves checks undecided"
    ),
}
# A constant line drawn on a panel (an alert threshold or a fixed limit) says nothing about it.
CONSTANT_LINE = re.compile(r"deliverability:\w+:threshold|vector\([0-9.]+\)")


class Prometheus:
    """Debian's prometheus on a free port of 127.0.0.1, its data in `directory`, stopped by PID."""

    def __init__(self, directory: Path, *, target: str) -> None:
        self.directory = directory
        (self.port,) = free_ports(1)
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.example.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(path) for path in RULE_FILES]
        config.pop("alerting")  # no Alertmanager here: alerts are evaluated, not sent
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)

    def api(
        self, path: str, params: dict[str, str] | None = None, *, post: bool = False
    ) -> dict[str, Any]:
        """An /api/v1 answer: {"status": "success", "data": ...} or {"status": "error", ...}."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        encoded = urllib.parse.urlencode(params or {})
        if post:
            request = urllib.request.Request(url, data=encoded.encode())
        else:
            request = urllib.request.Request(f"{url}?{encoded}" if encoded else url)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()  # the API explains a bad query in a JSON body with a 4xx status
        answer: dict[str, Any] = json.loads(body)
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", {"query": expr}, post=True)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        """Poll Prometheus' API until `condition` holds (bounded by WAIT)."""
        deadline = time.monotonic() + WAIT
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {WAIT:.0f} s; prometheus log:\n{self.tail()}")
            time.sleep(0.2)  # an external process's state can only be polled

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/-/ready", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _scenario(mail_system: MailSystem, directory: Path, port: int) -> Path:
    setup = AgentSetup(mail_system, directory)
    setup.route("good").route("bad", sender=BAD_SENDER)
    setup.route("wrongpass", password="not-the-password")
    setup.route("tls-mismatch", port=mail_system.ports.submissions, tls="starttls")
    setup.mailbox("seed", mail_system.new_mailbox())
    setup.mailbox("refuses", mail_system.new_mailbox(), address=f"reject-550@{SEED_DOMAIN}")
    setup.mailbox("defers", mail_system.new_mailbox(), address=f"defer-451@{SEED_DOMAIN}")
    for route in setup.routes:
        if route["name"] in SENDING_IPS:
            route["sending_ips"] = [SENDING_IPS[route["name"]]]
    setup.probes = {
        # The minimum interval: the first round often finishes before Prometheus' first scrape
        # of the agent, so the increase it sees may be the second round's, 10 s later.
        "interval": "10s",
        "jitter": "0s",
        "start": "immediate",
        "deadline": "60s",
        "pairs": [{"route": route, "mailbox": mailbox} for route, mailbox in PAIRS],
    }
    data = setup.data()
    data["listen"] = f"127.0.0.1:{port}"
    data["dns"] = {
        "nameservers": [f"127.0.0.1:{mail_system.ports.dns}"],
        "timeout": "5s",
        "blocklists": {"ips": [DNSBL_ZONE], "domains": [DNSBL_ZONE]},
        "dkim_selectors": {GOOD_DOMAIN: [DKIM_SELECTOR], BAD_DOMAIN: [DKIM_SELECTOR]},
    }
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


@pytest.fixture
def prometheus(mail_system: MailSystem, tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus scraping an agent that probes the mail system."""
    (agent_port,) = free_ports(1)
    config = _scenario(mail_system, tmp_path, agent_port)
    (tmp_path / "prometheus").mkdir()
    # Prometheus first, so it scrapes the agent from its first series on.
    server = Prometheus(tmp_path / "prometheus", target=f"127.0.0.1:{agent_port}")
    with (tmp_path / "agent.log").open("ab") as agent_log:
        agent: subprocess.Popen[bytes] | None = None
        try:
            server.wait_for("ready Prometheus", server.ready)
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=agent_log,
                stderr=agent_log,
            )
            yield server
        finally:
            server.stop()
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=WAIT)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(timeout=WAIT)


def _substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not substitute: {expr}"
    return expr


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def _scenario_seen(server: Prometheus) -> bool:
    """Whether Prometheus has seen every outcome of the scenario, and the bounces, increase."""
    outcomes = server.vector("sum by (outcome) (increase(deliverability_probes_total[5m])) > 0")
    bounces = server.vector("sum(increase(deliverability_bounces_total[5m])) > 0")
    return set(OUTCOMES) <= {sample["metric"]["outcome"] for sample in outcomes} and bool(bounces)


def _evaluations(server: Prometheus) -> dict[str, str]:
    """Each rule group's last evaluation time, as Prometheus reports it."""
    groups = server.api("rules")["data"]["groups"]
    return {group["name"]: group["lastEvaluation"] for group in groups}


def _evaluated_twice_since(server: Prometheus, before: dict[str, str]) -> Callable[[], bool]:
    """A condition that holds once every group has finished two evaluations after `before`:
    the second one started after the first was seen, so it read every sample seen before."""
    seen: dict[str, set[str]] = {name: {at} for name, at in before.items()}

    def condition() -> bool:
        for name, at in _evaluations(server).items():
            seen.setdefault(name, set()).add(at)
        return all(len(times) >= 3 for times in seen.values())

    return condition


def test_every_panel_query_and_rule_evaluates_against_a_real_prometheus(
    prometheus: Prometheus,
) -> None:
    server = prometheus
    server.wait_for("scrape of the agent", lambda: bool(server.vector("deliverability_build_info")))
    server.wait_for(f"increase of each of {OUTCOMES}", lambda: _scenario_seen(server))
    server.wait_for(
        "a finished run of the DNS checks",
        lambda: bool(server.vector("deliverability_dns_check_duration_seconds > 0")),
    )
    server.wait_for(
        "rule evaluations on them", _evaluated_twice_since(server, _evaluations(server))
    )
    shipped = [rule for path in RULE_FILES for rule in rules(path)]

    # --- rules: loaded, healthy, every expression evaluates ------------------------------------
    loaded = {
        (rule["name"], json.dumps(rule.get("labels") or {}, sort_keys=True)): rule
        for group in server.api("rules")["data"]["groups"]
        for rule in group["rules"]
    }
    assert len(loaded) == len(shipped)
    unhealthy = {name: r["lastError"] for name, r in loaded.items() if r["health"] != "ok"}
    assert unhealthy == {}
    for rule in shipped:
        answer = server.query(rule.expr)
        assert answer["status"] == "success", f"{rule.name}: {answer}"
        if rule.record is not None:
            level = set(rule.record.split(":")[0].split("_")) - {"deliverability"}
            series = server.vector(rule.record)
            # Every recording rule has data here, labelled exactly as its level says.
            assert series, f"{rule.record} recorded nothing"
            for sample in series:
                assert set(sample["metric"]) - {"__name__"} == level, sample

    # --- dashboards: every query evaluates; fed panels show data -------------------------------
    queries: list[PanelQuery] = [q for path in dashboard_files() for q in panel_queries(path)]
    panels: dict[str, list[list[float]]] = {}
    for query in queries:
        answer = server.query(_substitute(query.expr))
        assert answer["status"] == "success", f"{query.name}: {query.expr}: {answer}"
        if CONSTANT_LINE.fullmatch(query.expr):
            continue
        values = _values(answer["data"]["result"])
        panels.setdefault(f"{query.dashboard} / {query.panel}", []).append(values)
    assert set(NOT_FED) <= set(panels) and set(ALL_ZERO_OK) <= set(panels)
    for panel, results in panels.items():
        finite = [v for values in results for v in values if math.isfinite(v)]
        if panel in NOT_FED:
            continue
        assert finite, f"{panel}: no data"
        if panel not in ALL_ZERO_OK:
            assert any(v != 0 for v in finite), f"{panel}: only zeros"

    # --- variables: every label_values() query lists values ------------------------------------
    for path in dashboard_files():
        for variable in variables(path):
            if variable["type"] != "query":
                continue
            _, label = label_values_selector(variable["query"])
            # label_values(SELECTOR, label) asks Prometheus for label values of series matching it.
            match = _substitute(variable["query"]).removeprefix("label_values(").rsplit(",", 1)[0]
            answer = server.api(f"label/{label}/values", {"match[]": match})
            assert answer["status"] == "success", (variable["name"], answer)
            assert set(answer["data"]) == SCENARIO_LABELS[label], variable["name"]

    # --- alerts: the scenario's failures are pending, the agent's own alerts are quiet ---------
    active = {
        (alert["labels"]["alertname"], *(alert["labels"].get(k, "") for k in ALERT_KEYS))
        for alert in server.api("alerts")["data"]["alerts"]
    }
    assert EXPECTED_ALERTS - active == set(), active
    assert {a for a in active if a[0] == "DeliverabilityDnsRecordBroken"} == DNS_RECORD_BROKEN
    quiet = {name for name, *_ in active} & QUIET_ALERTS
    assert quiet == set(), active
