"""Pieces shared by the `*.dashboard.py` files: data source, template variables, panels that
must explain themselves, threshold lines from the alert rules, and a grid layout.

Every panel helper takes `shows` (what the panel shows) and `when_bad` (what to do when it looks
bad): the description Grafana displays is built from both, so no panel ships without them.
Queries are plain PromQL strings over the agent's metric catalog
(`agent.monitoring.catalog.CATALOG`) and the recording rules in `deploy/prometheus/`;
tests/test_dashboards.py checks every name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attr
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    GridPos,
    Heatmap,
    HeatmapColor,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    TimeSeries,
)

__all__ = [
    "DATASOURCE",
    "MAILBOX",
    "PAIR",
    "ROUTE",
    "RUNBOOK_URL",
    "Grid",
    "datasource_variable",
    "describe",
    "heatmap",
    "label_variable",
    "limit",
    "runbook_anchor",
    "stat",
    "table",
    "target",
    "threshold",
    "timeseries",
]

# The one place the runbook's address is spelled; alerts.rules.yml's runbook_url annotations are
# checked against it by tests/test_prometheus_rules.py.
RUNBOOK_URL = (
    "https://github.com/deliverability-agent/deliverability-agent/blob/main/docs/runbook.md"
)

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# Label filters for the template variables (multi-value, "All" is `.*`).
ROUTE = 'route=~"$route"'
MAILBOX = 'mailbox=~"$mailbox"'
PAIR = f"{ROUTE}, {MAILBOX}"
PROVIDER = 'provider=~"$provider"'

# PromQL both dashboards show, written once.
ACCEPTANCE_RATIO = (
    f"sum(route_mailbox:deliverability_probes_accepted:rate1h{{{PAIR}}})"
    f" / sum(route_mailbox:deliverability_probes:rate1h{{{PAIR}}})"
)
SMTP_5XX_RATIO_15M = f"route:deliverability_smtp_replies_5xx_per_sent:ratio_rate15m{{{ROUTE}}}"
SMTP_5XX_BASELINE_LIMIT = (
    "scalar(deliverability:smtp_5xx_baseline_factor:threshold) * avg_over_time("
    f"route:deliverability_smtp_replies_5xx_per_sent:ratio_rate1h{{{ROUTE}}}[1d])"
)
BOUNCE_RATIO_1H = f"route:deliverability_bounces_per_sent:ratio_rate1h{{{ROUTE}}}"
SMTP_REPLIES_BY_STAGE_CLASS = (
    f"sum by (stage, class) (increase(deliverability_smtp_replies_total{{{ROUTE}}}"
    "[$__rate_interval]))"
)

THRESHOLD_LEGEND = "alert threshold"
_REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def runbook_anchor(alert: str) -> str:
    """The runbook section of an alert (GitHub's anchor for a `## AlertName` heading)."""
    return f"{RUNBOOK_URL}#{alert.lower()}"


def describe(shows: str, when_bad: str) -> str:
    return f"{shows}\n\nWhen bad: {when_bad}"


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Any:
    """One PromQL query; refIds are assigned by the panel."""
    return Target(
        expr=expr,
        legendFormat=legend,
        instant=instant,
        format="table" if table else "time_series",
        datasource=DATASOURCE,
    )


def threshold(name: str) -> Any:
    """The alert threshold recorded as `deliverability:<name>:threshold`, drawn as a line."""
    return target(f"deliverability:{name}:threshold", THRESHOLD_LEGEND)


def limit(value: float) -> Any:
    """A fixed limit that an alert enforces through a check of the agent (the SPF lookup limit of
    RFC 7208, say), drawn like a threshold line. Not tunable, so not a recorded threshold."""
    return target(f"vector({value:g})", THRESHOLD_LEGEND)


def _with_ref_ids(targets: Sequence[Any]) -> list[Any]:
    return [attr.evolve(t, refId=_REF_IDS[i]) for i, t in enumerate(targets)]


def _links(alerts: Iterable[str]) -> list[dict[str, object]]:
    return [
        {"title": f"Runbook: {alert}", "url": runbook_anchor(alert), "targetBlank": True}
        for alert in alerts
    ]


_THRESHOLD_STYLE = {
    "matcher": {"id": "byName", "options": THRESHOLD_LEGEND},
    "properties": [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        {"id": "custom.fillOpacity", "value": 0},
        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
    ],
}


def timeseries(
    title: str,
    *,
    shows: str,
    when_bad: str,
    targets: Sequence[Any],
    unit: str = "short",
    alerts: Iterable[str] = (),
    ratio: bool = False,
    stacked: bool = False,
    bars: bool = False,
) -> Any:
    return TimeSeries(
        title=title,
        description=describe(shows, when_bad),
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        unit="percentunit" if ratio else unit,
        valueMin=0,
        valueMax=1 if ratio else None,
        links=_links(alerts),
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else 10,
        showPoints="never" if bars else "auto",
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull"],
        tooltipMode="multi",
        tooltipSort="desc",
        overrides=[_THRESHOLD_STYLE],
    )


def stat(
    title: str,
    *,
    shows: str,
    when_bad: str,
    targets: Sequence[Any],
    unit: str = "short",
    alerts: Iterable[str] = (),
    mappings: Sequence[dict[str, object]] = (),
) -> Any:
    return Stat(
        title=title,
        description=describe(shows, when_bad),
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
        decimals=None,
        links=_links(alerts),
        mappings=list(mappings),
        noValue="no data",
        # grafanalib's default is "", which Grafana cannot read as a list of steps.
        thresholds=[{"color": "text", "value": None}],
    )


def table(
    title: str,
    *,
    shows: str,
    when_bad: str,
    targets: Sequence[Any],
    alerts: Iterable[str] = (),
    hidden: Iterable[str] = (),
    renamed: Mapping[str, str] | None = None,
) -> Any:
    """A table of instant queries; `hidden` columns are left out (e.g. the `Value` of a query
    whose rows are the point, such as failing checks), `renamed` ones get a clearer header."""
    excluded = {"Time": True, "__name__": True} | {column: True for column in hidden}
    return Table(
        title=title,
        description=describe(shows, when_bad),
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        links=_links(alerts),
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": excluded, "renameByName": dict(renamed or {})},
            },
        ],
    )


def heatmap(title: str, *, shows: str, when_bad: str, targets: Sequence[Any]) -> Any:
    return Heatmap(
        title=title,
        description=describe(shows, when_bad),
        dataSource=DATASOURCE,
        targets=_with_ref_ids(targets),
        dataFormat="tsbuckets",
        color=HeatmapColor(colorScheme="interpolateOranges", mode="spectrum"),
        hideZeroBuckets=True,
        yBucketBound="upper",
        maxDataPoints=60,
    )


def datasource_variable() -> Any:
    return Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="Prometheus",
    )


def provider_and_mailbox_variables() -> list[Any]:
    """The `provider` variable and the `mailbox` variable it narrows: the mailboxes come from
    deliverability_mailbox_info (one series per mailbox), so choosing providers filters every
    panel through `mailbox=~"$mailbox"`, no join needed in the panels' queries."""
    return [
        label_variable("provider", label="Provider", metric="deliverability_mailbox_info"),
        label_variable(
            "mailbox",
            label="Seed mailbox",
            metric=f"deliverability_mailbox_info{{{PROVIDER}}}",
            all_is_any=False,
        ),
    ]


def label_variable(
    name: str,
    *,
    label: str,
    metric: str,
    multi: bool = True,
    include_all: bool = True,
    all_is_any: bool = True,
) -> Any:
    """A variable listing the values of `name` on `metric` (a catalog metric). "All" is `.*`
    (any value) unless `all_is_any` is false: then it is the listed values, so a variable whose
    list another one narrows (mailboxes by provider) filters by it even when "All" is chosen."""
    return Template(
        name=name,
        label=label,
        query=f"label_values({metric}, {name})",
        dataSource=DATASOURCE,
        multi=multi,
        includeAll=include_all,
        allValue=".*" if include_all and all_is_any else None,
        default="All" if include_all else None,
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
    )


class Grid:
    """Lays panels out left to right on Grafana's 24-column grid, wrapping to a new line."""

    WIDTH = 24

    def __init__(self) -> None:
        self.panels: list[Any] = []
        self._x = self._y = self._line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            RowPanel(title=title, gridPos=GridPos(h=1, w=self.WIDTH, x=0, y=self._y))
        )
        self._y += 1

    def add(self, panel: Any, *, w: int = 12, h: int = 8) -> None:
        if self._x + w > self.WIDTH:
            self._newline()
        self.panels.append(attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=self._x, y=self._y)))
        self._x += w
        self._line_height = max(self._line_height, h)

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = self._line_height = 0
