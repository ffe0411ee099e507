"""The Prometheus rules and the Alertmanager example: promtool and amtool accept them, the promtool
unit tests pass and cover every alert the way the issue asks (pending just before `for:`, firing
with exact labels at it, healthy series quiet), and every alert links its runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.dns.records import DnsCheck
from agent.monitoring.catalog import DNS_CHECK_OK
from dashboards.common import RUNBOOK_URL, runbook_anchor
from tests.monitoring_inventory import PROMETHEUS_DIR, RULE_FILES, Rule, rules, vocabulary
from tests.promql import metric_names, selectors

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
TEST_GROUPS: dict[Path, list[dict[str, Any]]] = {
    path: yaml.safe_load(path.read_text())["tests"] for path in TEST_FILES
}
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RECORDING, ALERTING = RULE_FILES
ALERTS = [r for r in rules(ALERTING) if r.alert]
RECORDS = [r for path in RULE_FILES for r in rules(path) if r.record]
THRESHOLD_GROUP = "deliverability-thresholds"
RECEIVERS = {"critical": "deliverability-pager", "warning": "deliverability-team"}


def _tool(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which(name)
    assert binary, f"{name} not found: install Debian's prometheus and prometheus-alertmanager"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def _duration(text: str) -> int:
    """Minutes of a Prometheus duration like 1h30m."""
    units = {"m": 1, "h": 60, "d": 1440}
    parts = re.findall(r"(\d+)([mhd])", text)
    assert "".join(n + u for n, u in parts) == text, f"unsupported duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# --- promtool ---------------------------------------------------------------------------------


def test_promtool_check_rules_accepts_both_rule_files() -> None:
    result = _tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_check_config_accepts_the_example_with_its_rule_files() -> None:
    example = PROMETHEUS_DIR / "prometheus.example.yml"
    result = _tool("promtool", "check", "config", str(example))
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(example.read_text())["rule_files"] == [p.name for p in RULE_FILES]


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    assert [p.name for p in TEST_FILES] == [
        "agent.test.yml",
        "dns.test.yml",
        "esp.test.yml",
        "oauth.test.yml",
        "placement.test.yml",
        "recording.test.yml",
        "reports.test.yml",
        "reputation.test.yml",
        "sharding.test.yml",
        "smtp.test.yml",
    ]
    # One promtool per file, concurrently: the suite stays fast on two cores.
    with ThreadPoolExecutor(max_workers=len(TEST_FILES)) as pool:
        results = list(
            pool.map(lambda p: _tool("promtool", "test", "rules", p.name, cwd=p.parent), TEST_FILES)
        )
    for path, result in zip(TEST_FILES, results, strict=True):
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
        assert "SUCCESS" in result.stdout


_DELIVERY_CHECKS = 'check=~"spf|spf_lookups|spf_authorized|dkim|dmarc|mx|fcrdns"'


@pytest.mark.parametrize(
    ("old", "new", "alert", "test_file"),
    [
        # Fires one evaluation early: "not firing just before for:" catches it.
        (
            "        for: 5m\n        labels:\n          severity: warning\n        annotations:\n"
            "          summary: The agent {{ $labels.instance }} refused",
            "        for: 4m\n        labels:\n          severity: warning\n        annotations:\n"
            "          summary: The agent {{ $labels.instance }} refused",
            "DeliverabilityConfigReloadFailed",
            "agent.test.yml",
        ),
        # Fires on every mailbox: the healthy series catch it.
        (
            "expr: deliverability_imap_up == 0",
            "expr: deliverability_imap_up < 2",
            "DeliverabilityImapMailboxUnreachable",
            "agent.test.yml",
        ),
        # Fires while writes succeed: the healthy agent catches it.
        (
            "expr: deliverability_ledger_writable == 0",
            "expr: deliverability_ledger_writable < 2",
            "DeliverabilityLedgerNotWritable",
            "agent.test.yml",
        ),
        # Fires on a failed write or two among successful ones: the flapping agent catches it.
        (
            "        for: 10m\n        labels:\n          severity: warning\n        annotations:\n"
            "          summary: The agent {{ $labels.instance }} cannot write",
            "        for: 1m\n        labels:\n          severity: warning\n        annotations:\n"
            "          summary: The agent {{ $labels.instance }} cannot write",
            "DeliverabilityLedgerNotWritable",
            "agent.test.yml",
        ),
        # Fires on a stale last success alone: the healthy credential between hourly refreshes
        # catches it.
        (
            "          ) > 0\n            and on (job, instance, credential)\n",
            "          ) >= 0\n            and on (job, instance, credential)\n",
            "DeliverabilityOAuthTokenRefreshFailing",
            "oauth.test.yml",
        ),
        # Fires on failures alone: the healthy credential's one failed request catches it.
        (
            "          time() - deliverability_oauth_token_last_success_timestamp_seconds > 1800\n",
            "          time() - deliverability_oauth_token_last_success_timestamp_seconds > -1\n",
            "DeliverabilityOAuthTokenRefreshFailing",
            "oauth.test.yml",
        ),
        # Fires on an informational check too: the optional records' series catch it.
        (
            _DELIVERY_CHECKS,
            _DELIVERY_CHECKS.replace("|mx|", "|mx|mta_sts|"),
            "DeliverabilityDnsRecordBroken",
            "dns.test.yml",
        ),
        # Forgets a check that matters: its expected alert goes missing.
        (
            _DELIVERY_CHECKS,
            _DELIVERY_CHECKS.replace("|fcrdns", ""),
            "DeliverabilityDnsRecordBroken",
            "dns.test.yml",
        ),
        # Fires on one run's worth of undecided checks: the window-only series catches it.
        (
            "        for: 2h\n",
            "        for: 1h\n",
            "DeliverabilityDnsChecksFailing",
            "dns.test.yml",
        ),
        # Two owners are as wrong as none: the doubled mailbox must fire too.
        (
            "(deliverability_shard_mailbox_owned) != 1",
            "(deliverability_shard_mailbox_owned) < 1",
            "DeliverabilityMailboxOwnerMissingOrDoubled",
            "sharding.test.yml",
        ),
        # Per job: counting totals across fleets would fire on the healthy one's own count.
        (
            "count by (job) (count by (job, total) (deliverability_shard_info)) > 1",
            "count(count by (total) (deliverability_shard_info)) > 1",
            "DeliverabilityShardCountMismatch",
            "sharding.test.yml",
        ),
    ],
)
def test_the_unit_tests_fail_when_an_alert_is_changed(
    tmp_path: Path, old: str, new: str, alert: str, test_file: str
) -> None:
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    alerts = copy / ALERTING.name
    text = alerts.read_text()
    assert text.count(old) == 1, alert
    alerts.write_text(text.replace(old, new))
    result = _tool("promtool", "test", "rules", test_file, cwd=copy / "tests")
    assert result.returncode == 1, alert
    assert "FAILED" in result.stderr
    assert f"alertname: {alert}" in result.stderr


# --- coverage of the unit tests ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    group: dict[str, Any]
    eval_minutes: int
    expected: list[dict[str, str]] | None  # None: an alert_rule_test expecting nothing


def _alert_cases(alert: str) -> Iterator[Case]:
    for groups in TEST_GROUPS.values():
        for group in groups:
            for case in group.get("alert_rule_test") or []:
                if case["alertname"] == alert:
                    expected = [a["exp_labels"] for a in case.get("exp_alerts") or []] or None
                    yield Case(group, _duration(case["eval_time"]), expected)


def _pending(group: dict[str, Any], alert: str, minutes: int) -> list[dict[str, str]]:
    """Label sets a promql_expr_test expects ALERTS{alertstate="pending"} to have."""
    found = []
    for case in group.get("promql_expr_test") or []:
        if _duration(case["eval_time"]) != minutes or f'alertname="{alert}"' not in case["expr"]:
            continue
        for sample in case["exp_samples"]:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
            if labels.pop("alertstate") == "pending":
                labels.pop("alertname")
                found.append(labels)
    return found


def _healthy(group: dict[str, Any]) -> bool:
    return any("healthy" in series["series"] for series in group["input_series"])


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r.name)
def test_every_alert_is_pending_just_before_for_then_fires_with_exact_labels(rule: Rule) -> None:
    assert rule.alert is not None and rule.duration is not None
    firing = [case for case in _alert_cases(rule.alert) if case.expected]
    assert firing, f"no unit test fires {rule.alert}"
    checked = 0
    for case in firing:
        before = case.eval_minutes - 1
        quiet = [
            c
            for c in _alert_cases(rule.alert)
            if c.group is case.group and c.eval_minutes == before and c.expected is None
        ]
        if not quiet:
            continue  # a later check of an alert already firing
        pending = _pending(case.group, rule.alert, before)
        assert case.expected is not None
        assert sorted(map(sorted, (p.items() for p in pending))) == sorted(
            map(sorted, (dict(e).items() for e in case.expected))
        ), f"{rule.alert}: pending at {before}m is not what fires at {case.eval_minutes}m"
        checked += 1
    assert checked, f"{rule.alert}: no test shows it not firing one minute before it fires"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r.name)
def test_every_alert_stays_quiet_on_healthy_series(rule: Rule) -> None:
    assert rule.alert is not None and rule.duration is not None
    quiet_checks = [
        case
        for case in _alert_cases(rule.alert)
        if _healthy(case.group) and case.eval_minutes >= _duration(rule.duration)
    ]
    assert quiet_checks, f"{rule.alert}: no test with healthy series after `for:`"
    for case in quiet_checks:
        for labels in case.expected or []:
            assert "healthy" not in str(labels.values()), f"{rule.alert} fires on {labels}"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r.name)
def test_every_firing_check_pins_the_annotations(rule: Rule) -> None:
    assert rule.alert is not None
    for groups in TEST_GROUPS.values():
        for group in groups:
            for case in group.get("alert_rule_test") or []:
                if case["alertname"] != rule.alert:
                    continue
                for alert in case.get("exp_alerts") or []:
                    assert set(alert["exp_annotations"]) == set(rule.annotations)


# --- the rules themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r.name)
def test_every_alert_has_for_severity_summary_templated_description_and_runbook(
    rule: Rule,
) -> None:
    assert rule.alert is not None and rule.alert.startswith("Deliverability")
    assert rule.duration is not None and _duration(rule.duration) >= 5
    assert rule.labels.get("severity") in RECEIVERS
    assert set(rule.annotations) == {"summary", "description", "runbook_url"}
    assert rule.annotations["summary"].strip()
    assert "{{" in rule.annotations["description"]
    assert rule.annotations["runbook_url"] == runbook_anchor(rule.alert)
    assert rule.annotations["runbook_url"].startswith(RUNBOOK_URL + "#")


def test_the_runbook_has_one_section_per_alert_in_the_same_order() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert headings == [rule.alert for rule in ALERTS]
    for heading in headings:
        # GitHub's anchor for a heading of letters only is the heading lowercased.
        assert re.fullmatch(r"[A-Za-z0-9]+", heading)
        assert runbook_anchor(heading).endswith("#" + heading.lower())


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {rule.alert for rule in ALERTS}
    assert names >= {
        "DeliverabilityBounceRateHigh",
        "DeliverabilitySmtp5xxSpike",
        "DeliverabilityInboxPlacementLow",
        "DeliverabilitySpamPlacementHigh",
        "DeliverabilityDeliveryLatencyHigh",
        "DeliverabilityProbesMissing",
        "DeliverabilityAuthenticationFailing",
        "DeliverabilityRouteTlsOrAuthErrors",
        "DeliverabilityImapMailboxUnreachable",
        "DeliverabilityAgentAbsent",
        "DeliverabilityProbesStale",
        "DeliverabilityConfigReloadFailed",
        "DeliverabilityTlsCertificateExpiringSoon",
        "DeliverabilitySendingIpBlocklisted",
        "DeliverabilityDnsRecordBroken",
        "DeliverabilityDnsChecksFailing",
        "DeliverabilityDmarcFailing",
        "DeliverabilityTlsRptFailures",
    }
    spike = next(r for r in ALERTS if r.alert == "DeliverabilitySmtp5xxSpike")
    assert "avg_over_time" in spike.expr  # relative to the route's own baseline
    bounce = next(r for r in ALERTS if r.alert == "DeliverabilityBounceRateHigh")
    assert "route:deliverability_bounces_per_sent:ratio_rate1h" in bounce.expr


def test_dns_record_broken_alerts_on_the_delivery_checks_only() -> None:
    broken = next(r for r in ALERTS if r.alert == "DeliverabilityDnsRecordBroken")
    (selector,) = selectors(broken.expr)
    assert selector.metric == DNS_CHECK_OK.name
    (matcher,) = selector.matchers
    assert matcher.label == "check" and matcher.literal_values() is not None
    checks = {DnsCheck(value) for value in matcher.literal_values() or ()}
    informational = {
        DnsCheck.DMARC_ENFORCED,  # p=none is a policy choice, not a broken record
        DnsCheck.DMARC_REPORTING,
        DnsCheck.MTA_STS,
        DnsCheck.TLS_RPT,
        DnsCheck.RDNS,  # fails only together with fcrdns, which alerts
        DnsCheck.DNSBL,  # errors only; listings have their own alert
    }
    assert checks == set(DnsCheck) - informational
    assert _DELIVERY_CHECKS in broken.expr


def test_every_rule_uses_only_exported_metrics_labels_and_values() -> None:
    vocab = vocabulary()
    problems = {rule.name: vocab.problems(rule.expr) for path in RULE_FILES for rule in rules(path)}
    assert {name: found for name, found in problems.items() if found} == {}


def test_recording_rules_are_named_level_metric_operations() -> None:
    # A name repeats only with different labels (the quantiles of one histogram).
    keyed = [(rule.record, tuple(sorted(rule.labels.items()))) for rule in RECORDS]
    assert len(keyed) == len(set(keyed))
    for rule in RECORDS:
        assert rule.record is not None
        level, metric, operations = rule.record.split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule.record
        assert re.fullmatch(r"[a-z0-9_]+", metric) and re.fullmatch(r"[a-z0-9_]+", operations)
        if rule.group == THRESHOLD_GROUP:
            assert (level, operations) == ("deliverability", "threshold"), rule.record
            assert re.fullmatch(r"vector\([0-9.]+\)", rule.expr.strip()), rule.record
        else:
            assert metric.startswith("deliverability_"), rule.record
        by = re.match(r"\s*sum by \(([^)]*)\)", rule.expr)
        if by:  # an aggregation's level names exactly the labels it keeps
            assert sorted(by.group(1).replace(" ", "").split(",")) == sorted(level.split("_"))


def test_every_threshold_is_recorded_once_used_by_an_alert_and_quoted_in_its_description() -> None:
    recorded = [r.record for r in RECORDS if r.group == THRESHOLD_GROUP]
    assert len(recorded) == len(set(recorded)) > 5
    used: set[str] = set()
    for rule in ALERTS:
        names = {n for n in metric_names(rule.expr) if n.endswith(":threshold")}
        for name in names:
            assert f'query "{name}"' in rule.annotations["description"], (rule.alert, name)
        used |= names
    assert used == set(recorded)


# --- Alertmanager -----------------------------------------------------------------------------


def test_amtool_accepts_the_alertmanager_example() -> None:
    result = _tool("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "2 receivers" in result.stdout


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager's matcher semantics: regexes are anchored, a missing label is ""."""
    for matcher in matchers:
        match = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', matcher)
        assert match, matcher
        name, op, value = match.groups()
        actual = labels.get(name, "")
        found = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not found:
            return False
    return True


def _inhibits(source: dict[str, str], target: dict[str, str]) -> bool:
    for rule in yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]:
        if (
            _matches(rule["source_matchers"], source)
            and _matches(rule["target_matchers"], target)
            and all(source.get(n, "") == target.get(n, "") for n in rule.get("equal", []))
        ):
            return True
    return False


def _labels(alert: str, **labels: str) -> dict[str, str]:
    rule = next(r for r in ALERTS if r.alert == alert)
    return {"alertname": alert, **rule.labels, **labels}


def test_alertmanager_a_failing_route_silences_its_own_warnings_only() -> None:
    bounces = _labels("DeliverabilityBounceRateHigh", route="r")
    assert _inhibits(bounces, _labels("DeliverabilityInboxPlacementLow", route="r", mailbox="m"))
    assert not _inhibits(bounces, _labels("DeliverabilityInboxPlacementLow", route="other"))
    assert not _inhibits(bounces, _labels("DeliverabilityImapMailboxUnreachable", mailbox="m"))


def test_alertmanager_a_blocklisting_silences_no_warning() -> None:
    # Critical but about no route: Alertmanager reads the missing route labels as equal, so
    # without the route matcher it would silence every warning that has no route either.
    listed = _labels("DeliverabilitySendingIpBlocklisted", target="192.0.2.25", zone="z.test")
    for rule in ALERTS:
        assert rule.alert is not None
        if rule.labels["severity"] == "warning":
            assert not _inhibits(listed, _labels(rule.alert, instance="agent:9465")), rule.alert


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r.name)
def test_alertmanager_routes_each_alert_by_its_severity(rule: Rule) -> None:
    assert rule.alert is not None
    labels = [f"alertname={rule.alert}", f"severity={rule.labels['severity']}", "route=primary"]
    result = _tool("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == RECEIVERS[rule.labels["severity"]]
