"""Every query the monitoring ships: panel targets and variables of the generated dashboards, and
the recording and alerting rules of deploy/prometheus/. Tests read them from here, so a query
added anywhere is checked everywhere (names against the catalog, and against a real Prometheus).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent import model
from agent.dns.records import Alignment, DmarcPolicy, DnsCheck
from agent.monitoring import catalog as metrics
from agent.oauth import TokenErrorKind
from agent.reading.reports import DISPOSITIONS, OTHER, TLS_POLICY_TYPES, TLS_RESULT_TYPES
from agent.reports.reader import SUCCESS
from agent.reputation.model import (
    DELIVERY_ERRORS,
    ComplianceRequirement,
    Feed,
    FeedErrorKind,
    FilterResult,
)
from tests.promql import selectors

__all__ = [
    "PROMETHEUS_DIR",
    "RULE_FILES",
    "PanelQuery",
    "Rule",
    "Vocabulary",
    "dashboard_files",
    "panel_queries",
    "panels",
    "rules",
    "variables",
    "vocabulary",
]

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "recording.rules.yml", PROMETHEUS_DIR / "alerts.rules.yml")
JSON_DIR = ROOT / "dashboards" / "json"


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One target of one panel of a generated dashboard."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a rule file: `record` or `alert` is set."""

    group: str
    expr: str
    record: str | None = None
    alert: str | None = None
    duration: str | None = None  # the rule's `for:`
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        name = self.record or self.alert
        assert name is not None
        return name


def dashboard_files(json_dir: Path = JSON_DIR) -> list[Path]:
    return sorted(json_dir.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(path: Path) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard JSON, rows and the panels inside collapsed rows included."""

    def walk(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from walk(panel.get("panels") or [])

    yield from walk(_load(path)["panels"])


def panel_queries(path: Path) -> list[PanelQuery]:
    title = _load(path)["title"]
    return [
        PanelQuery(title, panel["title"], target["refId"], target["expr"], target["instant"])
        for panel in panels(path)
        for target in panel.get("targets") or []
    ]


def variables(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _load(path)["templating"]["list"]
    return found


def rules(path: Path) -> list[Rule]:
    found = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            found.append(
                Rule(
                    group=group["name"],
                    expr=rule["expr"],
                    record=rule.get("record"),
                    alert=rule.get("alert"),
                    duration=rule.get("for"),
                    labels=rule.get("labels") or {},
                    annotations=rule.get("annotations") or {},
                )
            )
    return found


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The metric names queries may use, the labels each has, and the values of bounded labels.

    Built from the agent's catalog (`agent.monitoring.catalog.CATALOG`), its label enums
    (`agent.model`, and `agent.dns.records` for the DNS checks) and the recording rules: never
    from a list kept by hand.
    """

    labels: Mapping[str, frozenset[str]]  # metric name -> labels it may be matched on
    values: Mapping[str, frozenset[str]]  # bounded label -> its values, for every metric
    metric_values: Mapping[tuple[str, str], frozenset[str]]  # (metric, label) -> values

    def problems(self, expr: str) -> list[str]:
        """Every unknown metric, label or bounded label value in `expr` (empty when clean)."""
        found = []
        for selector in selectors(expr):
            if selector.metric is None:
                found.append(f"selector without a metric name: {selector}")
                continue
            allowed = self.labels.get(selector.metric)
            if allowed is None:
                found.append(f"unknown metric {selector.metric!r}")
                continue
            for matcher in selector.matchers:
                if matcher.label not in allowed:
                    found.append(f"{selector.metric} has no label {matcher.label!r}")
                    continue
                values = self.metric_values.get(
                    (selector.metric, matcher.label), self.values.get(matcher.label)
                )
                literal = matcher.literal_values()
                if values is not None and literal is not None:
                    found.extend(
                        f"{selector.metric}: {matcher.label}={value!r} is not one of "
                        f"{sorted(values)}"
                        for value in literal
                        if value not in values
                    )
        return found


def vocabulary() -> Vocabulary:
    def enum_values(*enums: type[Any]) -> frozenset[str]:
        return frozenset(member.value for enum in enums for member in enum)

    target_labels = {"job", "instance"}  # added by Prometheus when it scrapes the agent
    labels: dict[str, frozenset[str]] = {}
    for spec in metrics.CATALOG:
        names = {*spec.labels, *target_labels}
        labels[spec.name] = frozenset(names)
        if spec.kind is metrics.MetricKind.HISTOGRAM:
            labels[f"{spec.name}_bucket"] = frozenset({*names, "le"})
            labels[f"{spec.name}_sum"] = labels[f"{spec.name}_count"] = frozenset(names)
        if spec.kind is metrics.MetricKind.SUMMARY:  # no quantiles: count and sum only
            labels[f"{spec.name}_sum"] = labels[f"{spec.name}_count"] = frozenset(names)
    for path in RULE_FILES:
        for rule in rules(path):
            if rule.record is not None:
                level = rule.record.split(":")[0]
                # `level` lists the result's labels; the thresholds' level names none.
                labels[rule.record] = frozenset(level.split("_")) - {"deliverability"}
    values = {
        "outcome": enum_values(model.Outcome),
        "stage": enum_values(model.Stage),
        "class": enum_values(model.ReplyClass),
        "kind": enum_values(model.ErrorKind, model.ErrorKind),
        "method": enum_values(model.AuthMethod),
        "result": enum_values(model.AuthResult) | {model.AUTH_ABSENT},
        "found_by": enum_values(model.FoundBy),
    }
    metric_values = {
        (metrics.LEDGER_ERRORS.name, "kind"): enum_values(model.LedgerErrorKind),
        (metrics.INBOX_CATEGORIES.name, "category"): enum_values(model.InboxCategory),
        (metrics.BOUNCES.name, "type"): enum_values(model.BounceType),
        (metrics.BOUNCES.name, "source"): enum_values(model.BounceSource),
        (metrics.BOUNCES.name, "reason"): enum_values(model.BounceReason),
        (metrics.DNS_CHECK_OK.name, "check"): enum_values(DnsCheck),
        (metrics.DNS_CHECK_ERRORS.name, "check"): enum_values(DnsCheck),
        (metrics.DMARC_POLICY_INFO.name, "policy"): enum_values(DmarcPolicy),
        (metrics.DMARC_POLICY_INFO.name, "subdomain_policy"): enum_values(DmarcPolicy),
        (metrics.DMARC_POLICY_INFO.name, "adkim"): enum_values(Alignment),
        (metrics.DMARC_POLICY_INFO.name, "aspf"): enum_values(Alignment),
        (metrics.OAUTH_TOKEN_REFRESHES.name, "result"): enum_values(TokenErrorKind) | {"ok"},
        (metrics.SPAM_VERDICTS.name, "source"): enum_values(model.SpamSource),
        (metrics.SPAM_VERDICTS.name, "category"): enum_values(model.SpamCategory),
        (metrics.REPORTS.name, "kind"): enum_values(model.ReportKind),
        (metrics.REPORTS.name, "result"): enum_values(model.ReportResult, model.ReportProblem),
        (metrics.DMARC_MESSAGES.name, "disposition"): frozenset({*DISPOSITIONS, OTHER}),
        (metrics.DMARC_MESSAGES.name, "dkim"): frozenset({"pass", "fail"}),
        (metrics.DMARC_MESSAGES.name, "spf"): frozenset({"pass", "fail"}),
        (metrics.DMARC_SOURCE_MESSAGES.name, "dmarc"): frozenset({"pass", "fail"}),
        (metrics.TLSRPT_SESSIONS.name, "policy_type"): frozenset({*TLS_POLICY_TYPES, OTHER}),
        (metrics.TLSRPT_SESSIONS.name, "result"): frozenset({SUCCESS, *TLS_RESULT_TYPES, OTHER}),
        (metrics.REPORT_NEWEST_END.name, "kind"): enum_values(model.ReportKind),
        (metrics.SNDS_FILTER_RESULT.name, "result"): enum_values(FilterResult),
        (metrics.SNDS_MESSAGES.name, "kind"): frozenset({"rcpt", "data", "recipients"}),
        (metrics.POSTMASTER_AUTH_SUCCESS_RATIO.name, "method"): frozenset({"spf", "dkim", "dmarc"}),
        (metrics.POSTMASTER_COMPLIANT.name, "requirement"): enum_values(ComplianceRequirement),
        (metrics.POSTMASTER_DELIVERY_ERROR_RATIO.name, "type"): frozenset(
            kind for kind, _ in DELIVERY_ERRORS
        ),
        (metrics.POSTMASTER_DELIVERY_ERROR_RATIO.name, "reason"): frozenset(
            reason for _, reason in DELIVERY_ERRORS
        ),
        (metrics.REPUTATION_FEED_ERRORS.name, "kind"): enum_values(FeedErrorKind),
        (metrics.REPUTATION_FEED_ERRORS.name, "feed"): enum_values(Feed),
        (metrics.REPUTATION_FEED_LAST_SUCCESS.name, "feed"): enum_values(Feed),
        **{
            (f"{metrics.SPAM_SCORE.name}{suffix}", "source"): enum_values(model.SpamSource)
            for suffix in ("_bucket", "_sum", "_count")
        },
    }
    return Vocabulary(labels, values, metric_values)
