"""The Grafana dashboards: generated JSON is current, every query uses only what the agent
exports (read from its metric catalog), every panel explains itself, and the agent never needs
grafanalib."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.dns.records import SPF_LOOKUP_LIMIT
from agent.monitoring.catalog import CATALOG
from dashboards import build
from dashboards.common import RUNBOOK_URL
from tests.monitoring_inventory import (
    RULE_FILES,
    dashboard_files,
    panel_queries,
    panels,
    rules,
    variables,
    vocabulary,
)
from tests.promql import (
    Matcher,
    PromQLError,
    Selector,
    label_values_selector,
    metric_names,
    selectors,
    unaggregated_metrics,
)

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"
DASHBOARDS = {path.stem: path for path in dashboard_files()}


def test_both_dashboards_are_generated_from_their_sources() -> None:
    assert sorted(DASHBOARDS) == ["overview", "route"]
    assert [p.name for p in build.sources()] == ["overview.dashboard.py", "route.dashboard.py"]


def test_committed_dashboard_json_is_what_the_sources_generate() -> None:
    stale = build.stale(build.generate())
    assert stale == [], f"stale: {stale}; run `python -m dashboards` and commit the result"


def test_check_exits_1_naming_a_stale_or_orphaned_file_and_0_once_regenerated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build.main([], json_dir=tmp_path) == 0
    assert build.main(["--check"], json_dir=tmp_path) == 0
    overview = tmp_path / "overview.json"
    overview.write_text(overview.read_text().replace("Deliverability overview", "Edited"))
    (tmp_path / "gone.json").write_text("{}\n")
    capsys.readouterr()
    assert build.main(["--check"], json_dir=tmp_path) == 1
    err = capsys.readouterr().err
    assert f"stale: {overview}" in err
    assert f"stale: {tmp_path / 'gone.json'}" in err
    (tmp_path / "gone.json").unlink()
    assert build.main([], json_dir=tmp_path) == 0
    assert build.main(["--check"], json_dir=tmp_path) == 0


def test_python_m_dashboards_check_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashboards", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK: 2 dashboard(s) current" in result.stdout


def test_the_agent_never_imports_grafanalib() -> None:
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "agent").rglob("*.py")
        if path.stem != "__main__"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grafanalib', 'dashboards')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert "agent.app.cli" in modules and "agent.app.service" in modules


# --- the queries ------------------------------------------------------------------------------


def test_the_selector_reader_finds_metrics_and_matchers_and_refuses_what_does_not_parse() -> None:
    expr = (
        'sum by (route, le) (rate(a_total{x="1", y=~"p|q"}[$__rate_interval])) / on (route) '
        "group_left () (b:c:d > 0) or absent(e) unless topk(3, f offset 5m) * scalar(g)"
    )
    assert metric_names(expr) == {"a_total", "b:c:d", "e", "f", "g"}
    (first, *_) = selectors(expr)
    assert [(m.label, m.op, m.literal_values()) for m in first.matchers] == [
        ("x", "=", ("1",)),
        ("y", "=~", ("p", "q")),
    ]
    assert selectors('{__name__="h", z!~"$v"}') == [
        Selector("h", (Matcher("__name__", "=", "h"), Matcher("z", "!~", "$v")))
    ]
    with pytest.raises(PromQLError, match="unknown function with name 'rat'"):
        selectors("rat(a_total[5m])")
    # Only Grafana's range macros stand for a duration; any other variable there is an error.
    with pytest.raises(PromQLError, match="unexpected character inside brackets"):
        selectors("rate(a_total[$interval])")
    assert label_values_selector('label_values(a_total{x=~"$x"}, route)') == (
        Selector("a_total", (Matcher("x", "=~", "$x"),)),
        "route",
    )
    with pytest.raises(PromQLError, match="takes a series selector"):
        label_values_selector("label_values(rate(a_total[5m]), route)")


def test_the_vocabulary_flags_unknown_metrics_labels_and_label_values() -> None:
    vocab = vocabulary()
    assert vocab.problems('rate(deliverability_probes_total{outcome="inbox"}[1h])') == []
    assert vocab.problems("deliverability_delivery_seconds_bucket{le='5'}") == []
    assert vocab.problems("deliverability_probes_totl") == [
        "unknown metric 'deliverability_probes_totl'"
    ]
    assert vocab.problems('deliverability_probes_total{stage="rcpt"}') == [
        "deliverability_probes_total has no label 'stage'"
    ]
    (problem,) = vocab.problems('deliverability_smtp_replies_total{class=~"4xx|5XX"}')
    assert "class='5XX' is not one of" in problem
    (problem,) = vocab.problems('deliverability_bounces_total{type="permanent"}')
    assert "type='permanent' is not one of ['hard', 'soft']" in problem
    # DNS check names come from agent.dns.records.DnsCheck.
    assert vocab.problems('deliverability_dns_check_ok{check=~"spf|fcrdns"}') == []
    (problem,) = vocab.problems('deliverability_dns_check_errors_total{check="spf_lookup"}')
    assert "check='spf_lookup' is not one of" in problem
    (problem,) = vocab.problems('deliverability_dmarc_policy_info{policy="reject", aspf="x"}')
    assert "aspf='x' is not one of ['r', 's']" in problem
    # Labels of recording rules are the ones their level names.
    assert vocab.problems('route:deliverability_probes_sent:rate1h{route="r"}') == []
    assert vocab.problems('route:deliverability_probes_sent:rate1h{mailbox="m"}') != []


def test_catalog_names_come_from_the_agent_not_from_a_list_here() -> None:
    vocab = vocabulary()
    for spec in CATALOG:
        assert spec.name in vocab.labels
    # Only catalog metrics (and their histogram and summary series) and the recording rules are
    # known; a summary here has no quantiles, so no bare samples of its own.
    recorded = {r.record for path in RULE_FILES for r in rules(path) if r.record}
    histogram_series = {
        f"{spec.name}{suffix}"
        for spec in CATALOG
        if spec.kind.value == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    summary_series = {
        f"{spec.name}{suffix}"
        for spec in CATALOG
        if spec.kind.value == "summary"
        for suffix in ("_sum", "_count")
    }
    known = {s.name for s in CATALOG} | histogram_series | summary_series | recorded
    assert set(vocab.labels) == known


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_uses_only_exported_metrics_labels_and_values(name: str) -> None:
    vocab = vocabulary()
    queries = panel_queries(DASHBOARDS[name])
    assert len(queries) > 20 if name == "overview" else len(queries) > 10
    problems = {q.name: vocab.problems(q.expr) for q in queries}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variable_queries_use_exported_metrics(name: str) -> None:
    vocab = vocabulary()
    found = {}
    for variable in variables(DASHBOARDS[name]):
        if variable["type"] != "query":
            continue
        selector, label = label_values_selector(variable["query"])
        assert selector.metric is not None
        assert label in vocab.labels[selector.metric]
        found[variable["name"]] = label
    assert found == {"route": "route", "provider": "provider", "mailbox": "mailbox"}


def test_overview_filters_by_route_and_mailbox_and_the_drill_down_by_one_route() -> None:
    overview = {v["name"]: v for v in variables(DASHBOARDS["overview"])}
    route = {v["name"]: v for v in variables(DASHBOARDS["route"])}
    assert list(overview) == ["datasource", "route", "provider", "mailbox"]
    assert overview["route"]["multi"] and overview["route"]["includeAll"]
    assert overview["route"]["allValue"] == ".*"
    assert list(route) == ["datasource", "route", "provider", "mailbox"]
    assert not route["route"]["multi"] and not route["route"]["includeAll"]
    for path in DASHBOARDS.values():
        for query in panel_queries(path):
            if "mailbox=" in query.expr:
                assert 'mailbox=~"$mailbox"' in query.expr, query.name
            if "route=" in query.expr:
                assert 'route=~"$route"' in query.expr, query.name


def test_the_provider_variable_narrows_the_mailboxes_so_every_panel_follows_it() -> None:
    for path in DASHBOARDS.values():
        found = {v["name"]: v for v in variables(path)}
        assert found["provider"]["query"] == "label_values(deliverability_mailbox_info, provider)"
        assert found["mailbox"]["query"] == (
            'label_values(deliverability_mailbox_info{provider=~"$provider"}, mailbox)'
        )
        # "All" mailboxes must mean the listed ones (those of the chosen providers), not `.*`.
        assert found["mailbox"]["includeAll"] and found["mailbox"]["allValue"] is None


# --- the panels -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_says_what_it_shows_and_what_to_do_when_it_is_bad(name: str) -> None:
    for panel in panels(DASHBOARDS[name]):
        if panel["type"] == "row":
            continue
        shows, _, when_bad = (panel.get("description") or "").partition("\n\nWhen bad: ")
        assert len(shows) > 20 and len(when_bad) > 20, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping_and_have_unique_ids(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    ids = []
    for panel in panels(DASHBOARDS[name]):
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    assert len(ids) == len(set(ids))


def test_overview_covers_what_the_issue_asks_for() -> None:
    titles = {panel["title"] for panel in panels(DASHBOARDS["overview"])}
    exprs = " ".join(q.expr for q in panel_queries(DASHBOARDS["overview"]))
    for needed in (
        "Acceptance rate",
        "Inbox placement per route and mailbox",
        "Spam placement per route and mailbox",
        "Missing probes per route and mailbox",
        "Delivery latency p50 / p95 / p99 per seed mailbox",
        "Mean delivery latency per route",
        "Delivery latency distribution",
        "SMTP replies by stage and class",
        "4xx and 5xx replies per route",
        "Top 4xx/5xx enhanced status codes",
        "Bounce rate per route",
        "SPF / DKIM / DMARC pass rate",
        "Probes in flight per pair",
        "Late probes",
        "IMAP connection up",
        "Config reload",
        "Agents (build info)",
        "DNS checks failing",
        "Failing DNS checks by target",
        "Blocklist listings",
        "Blocklisted IPs and domains",
        "SPF DNS lookups per domain",
        "Undecided DNS checks by check",
        "DKIM keys",
        "DMARC policies",
    ):
        assert needed in titles
    heatmaps = [p for p in panels(DASHBOARDS["overview"]) if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["dataFormat"] == "tsbuckets"
    assert "deliverability_build_info" in exprs


def test_overview_dns_row_counts_the_checks_the_alert_fires_on_and_ignores_routes() -> None:
    alert = next(
        r for path in RULE_FILES for r in rules(path) if r.alert == "DeliverabilityDnsRecordBroken"
    )
    (alerted,) = (m for s in selectors(alert.expr) for m in s.matchers if m.label == "check")
    row = _row(DASHBOARDS["overview"], "DNS and reputation (all routes)")
    assert [p["title"] for p in row][:3] == [
        "DNS checks failing",
        "Blocklist listings",
        "Last DNS check run took",
    ]
    (stat,) = (q for q in panel_queries(DASHBOARDS["overview"]) if q.panel == "DNS checks failing")
    counted = {m for s in selectors(stat.expr) for m in s.matchers if m.label == "check"}
    assert counted == {alerted}
    spf = next(p for p in row if p["title"] == "SPF DNS lookups per domain")
    assert [t["expr"] for t in spf["targets"]][1] == f"vector({SPF_LOOKUP_LIMIT})"
    for panel in row:
        assert all("$route" not in t["expr"] for t in panel["targets"]), panel["title"]


def _row(path: Path, title: str) -> list[dict[str, Any]]:
    """The panels between the row titled `title` and the next row."""
    found: list[dict[str, Any]] = []
    inside = False
    for panel in panels(path):
        if panel["type"] == "row":
            inside = panel["title"] == title
        elif inside:
            found.append(panel)
    assert found, title
    return found


def test_route_drill_down_shows_every_stage_class_code_and_error_kind() -> None:
    exprs = [q.expr for q in panel_queries(DASHBOARDS["route"])]
    assert any("sum by (stage, class)" in e and "smtp_replies_total" in e for e in exprs)
    assert any("sum by (stage, code, enhanced_code, class)" in e for e in exprs)
    assert any("sum by (stage, kind)" in e and "smtp_errors_total" in e for e in exprs)


def test_panel_runbook_links_point_at_runbook_sections() -> None:
    anchors = _runbook_anchors()
    linked = set()
    for path in DASHBOARDS.values():
        for panel in panels(path):
            for link in panel.get("links") or []:
                base, _, anchor = link["url"].partition("#")
                assert base == RUNBOOK_URL
                assert anchor in anchors, link
                linked.add(anchor)
    alerts = {r.alert.lower() for path in RULE_FILES for r in rules(path) if r.alert}
    # Every alert but the agent being absent (no series left to draw) has a panel linking it.
    assert alerts - linked == {"deliverabilityagentabsent"}


def test_threshold_lines_use_recorded_thresholds() -> None:
    recorded = {r.record for path in RULE_FILES for r in rules(path) if r.record}
    thresholds = {
        name
        for path in DASHBOARDS.values()
        for query in panel_queries(path)
        for name in metric_names(query.expr)
        if name.endswith(":threshold")
    }
    assert thresholds and thresholds <= recorded


def _runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's `## ` headings."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_generated_json_is_plain_json_with_sorted_keys() -> None:
    for path in DASHBOARDS.values():
        text = path.read_text()
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


# Panels that show one series per agent on purpose, and metrics only one replica exports.
PER_REPLICA_PANELS = {
    "Agents (build info)": "one row per agent: a rollout shows as mixed versions",
    "Shards: seed mailboxes per replica": "how many mailboxes each replica owns",
}
ONE_REPLICA_METRICS = {
    # DNS checks run on shard 0 only (agent/sharding.py): one series per check, never summed.
    "deliverability_dns_check_ok": "shard 0 only",
    "deliverability_dnsbl_listed": "shard 0 only",
}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_aggregate_across_sharded_replicas(name: str) -> None:
    """With N replicas behind one job, a raw selector shows one series per replica (instance,
    pod): panels aggregate to the labels they need; recording rules already do."""
    problems = {}
    for query in panel_queries(DASHBOARDS[name]):
        if query.panel in PER_REPLICA_PANELS:
            continue
        raw = {
            metric
            for metric in unaggregated_metrics(query.expr)
            if ":" not in metric and metric not in ONE_REPLICA_METRICS
        }
        if raw:
            problems[query.name] = sorted(raw)
    assert problems == {}
