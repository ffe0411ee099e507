"""What PromQL expressions refer to: metric names and label matchers, without a PromQL engine.

The dashboards and the Prometheus rules may only use metric names from the agent's catalog and
the recording rules; tests check that by reading every expression with `selectors()`. The reader
tokenizes the expression and fails loudly on anything it does not know (an unknown function, a
stray character), so a name cannot slip through unread. It also reads Grafana's
`label_values(selector, label)` variable queries and leaves Grafana's `$variables` inside strings
and ranges alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "FUNCTIONS",
    "Matcher",
    "PromQLError",
    "Selector",
    "label_values_selector",
    "metric_names",
    "selectors",
]


class PromQLError(ValueError):
    """An expression this reader cannot account for; the message says where."""


# Prometheus 2.x functions and aggregation operators (word lists read better than 80 literals).
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
    count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
    histogram_quantile holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 max_over_time min_over_time minute month predict_linear
    present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt
    stddev_over_time stdvar_over_time sum_over_time time timestamp vector year
    acos acosh asin asinh atan atanh cos cosh deg pi rad sin sinh tan tanh
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    """.split()  # noqa: SIM905
)
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()  # noqa: SIM905
)
# Keywords whose parenthesized argument is a list of label names.
_LABEL_LIST_KEYWORDS = frozenset(("by", "without", "on", "ignoring", "group_left", "group_right"))
_KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"))
_KEYWORDS |= _LABEL_LIST_KEYWORDS

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<braces>\{(?:[^{}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
    | (?P<brackets>\[[^\[\]]*\])
    | (?P<number>(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>(),])
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(
    r"""\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(?:,|$)"""
)
_LABEL_VALUES = re.compile(
    r"^\s*label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$"
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
    """A vector selector: a metric name (None for `{__name__=...}` forms) and its matchers."""

    metric: str | None
    matchers: tuple[Matcher, ...] = ()


def _tokens(expr: str) -> Iterator[tuple[str, str, int]]:
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(
                f"unexpected {expr[position : position + 20]!r} at {position}: {expr}"
            )
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group(), position
        position = match.end()


def _matchers(block: str, expr: str) -> tuple[Matcher, ...]:
    inner = block[1:-1].strip()
    found: list[Matcher] = []
    position = 0
    while position < len(inner):
        match = _MATCHER.match(inner, position)
        if match is None:
            raise PromQLError(f"unreadable label matchers {block!r} in: {expr}")
        found.append(Matcher(match["label"], match["op"], match["value"][1:-1]))
        position = match.end()
    return tuple(found)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in `expr`, in order. Raises PromQLError on what it cannot read."""
    tokens = list(_tokens(expr))
    found: list[Selector] = []
    depth_skip: int | None = None  # paren depth of a `by (...)`-style label list being skipped
    depth = 0
    i = 0
    while i < len(tokens):
        kind, text, position = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if kind == "op" and text == "(":
            depth += 1
        elif kind == "op" and text == ")":
            depth -= 1
            if depth_skip is not None and depth < depth_skip:
                depth_skip = None
        elif depth_skip is not None:
            pass  # label names of by/without/on/ignoring/group_left/group_right
        elif kind == "ident":
            if text in _LABEL_LIST_KEYWORDS:
                if following is not None and following[1] == "(":
                    depth_skip = depth + 1
            elif text in _KEYWORDS:
                pass
            elif following is not None and following[1] == "(":
                if text not in FUNCTIONS:
                    raise PromQLError(f"unknown function {text!r} at {position}: {expr}")
            elif (
                text in AGGREGATIONS
                and following is not None
                and following[1]
                in (
                    "by",
                    "without",
                )
            ):
                pass
            else:
                matchers: tuple[Matcher, ...] = ()
                if following is not None and following[0] == "braces":
                    matchers = _matchers(following[1], expr)
                    i += 1
                found.append(Selector(text, matchers))
        elif kind == "braces":
            matchers = _matchers(text, expr)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            found.append(Selector(names[0] if names else None, matchers))
        i += 1
    if depth != 0:
        raise PromQLError(f"unbalanced parentheses: {expr}")
    return found


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr) if s.metric is not None}


def label_values_selector(query: str) -> tuple[Selector, str]:
    """The selector and label of a Grafana `label_values(selector, label)` variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise PromQLError(f"not a label_values(selector, label) query: {query}")
    (selector,) = selectors(match["selector"])
    return selector, match["label"]
