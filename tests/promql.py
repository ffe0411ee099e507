"""What a query of the monitoring refers to: its vector selectors (metric name, label matchers),
read with promql-parser, the Python binding of GreptimeTeam's PromQL parser.

The dashboards and the Prometheus rules may only use metric names from the agent's catalog and
the recording rules; tests check that by reading every expression with `selectors()`. Grafana's
queries are not quite PromQL: Grafana replaces its range macros (`[$__rate_interval]`,
`[$__range]`) before it sends a query, so `selectors()` puts a duration in their place; any other
`$` outside a string stays a parse error. Grafana's `label_values(selector, label)` variable
queries are read by `label_values_selector()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import promql_parser

__all__ = [
    "Matcher",
    "PromQLError",
    "Selector",
    "label_values_selector",
    "metric_names",
    "selectors",
    "unaggregated_metrics",
]


class PromQLError(ValueError):
    """An expression that does not parse; the message names it."""


# Only where Grafana puts a duration: a range or a subquery's range and step.
_GRAFANA_RANGE_MACRO = re.compile(r"(?<=[\[:])\$__(?:rate_interval|interval|range)(?=[\]:])")
_LABEL_VALUES = re.compile(
    r"^\s*label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$"
)
# MatchOp members are not hashable, hence pairs rather than a dict.
_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str

    def literal_values(self) -> tuple[str, ...] | None:
        """The label values this matcher names: its value, or a regex's plain alternatives
        (`a|b|c`); None for any other regex or a value holding a Grafana variable."""
        if "$" in self.value:
            return None
        if self.op in ("=", "!="):
            return (self.value,)
        parts = self.value.split("|")
        if all(re.fullmatch(r"[A-Za-z0-9_.-]+", part) for part in parts):
            return tuple(parts)
        return None


@dataclass(frozen=True, slots=True)
class Selector:
    """A vector selector: a metric name (None when neither written nor `{__name__="..."}`) and
    its matchers."""

    metric: str | None
    matchers: tuple[Matcher, ...] = ()


def _matcher(found: promql_parser.Matcher) -> Matcher:
    op = next(text for member, text in _OPS if found.op == member)
    return Matcher(found.name, op, found.value)


def _selector(node: promql_parser.VectorSelector) -> Selector:
    # Prometheus 3's `{a="x" or b="y"}` keeps its groups apart; every matcher is checked alike.
    found = [*node.matchers.matchers, *(m for group in node.matchers.or_matchers for m in group)]
    matchers = tuple(_matcher(m) for m in found)
    metric = node.name or next(
        (m.value for m in matchers if m.label == "__name__" and m.op == "="), None
    )
    return Selector(metric, matchers)


def _parse(expr: str) -> promql_parser.Expr:
    try:
        return promql_parser.parse(_GRAFANA_RANGE_MACRO.sub("5m", expr))
    except ValueError as error:
        raise PromQLError(f"{error}: {expr}") from error


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in `expr`, in order. Raises PromQLError when it does not parse."""
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(_selector(node))

    promql_parser.walk(_parse(expr), pre_visit=visit)
    return found


def unaggregated_metrics(expr: str) -> set[str]:
    """Metric names in `expr` read outside any aggregation (sum, min, max, count, ...): their
    series keep every label the target adds, `instance` and `pod` included."""
    found: set[str] = set()
    depth = 0

    def enter(node: promql_parser.Expr) -> None:
        nonlocal depth
        if isinstance(node, promql_parser.AggregateExpr):
            depth += 1
        elif isinstance(node, promql_parser.VectorSelector) and depth == 0:
            name = _selector(node).metric
            if name is not None:
                found.add(name)

    def leave(node: promql_parser.Expr) -> None:
        nonlocal depth
        if isinstance(node, promql_parser.AggregateExpr):
            depth -= 1

    promql_parser.walk(_parse(expr), pre_visit=enter, post_visit=leave)
    return found


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr) if s.metric is not None}


def label_values_selector(query: str) -> tuple[Selector, str]:
    """The selector and label of a Grafana `label_values(selector, label)` variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise PromQLError(f"not a label_values(selector, label) query: {query}")
    tree = _parse(match["selector"])
    if not isinstance(tree, promql_parser.VectorSelector):
        raise PromQLError(f"label_values() takes a series selector: {query}")
    return _selector(tree), match["label"]
