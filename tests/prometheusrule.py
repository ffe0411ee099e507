"""Render the prometheus-operator PrometheusRule from the agent's Prometheus rule files.

`python -m tests.prometheusrule` rewrites deploy/kubernetes/prometheus-operator/prometheusrule.yaml
from deploy/prometheus/*.rules.yml. The rule files stay the one source: tests/test_deploy_bundle.py
fails when the committed PrometheusRule differs from what `render()` makes of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["OUTPUT", "ROOT", "RULES_DIR", "main", "render", "rule_files"]

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheus-operator" / "prometheusrule.yaml"
NAME = "deliverability-agent"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, so the output stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    """The rule files the PrometheusRule is made of, in the order their groups appear in it."""
    return sorted(rules_dir.glob("*.rules.yml"))


def render(rules_dir: Path = RULES_DIR) -> str:
    """The PrometheusRule holding every group of every rule file, as YAML text."""
    files = rule_files(rules_dir)
    if not files:
        raise FileNotFoundError(f"no *.rules.yml in {rules_dir}")
    groups: list[Any] = []
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise ValueError(f"{path}: expected a mapping with a list of groups")
        groups.extend(data["groups"])
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {"groups": groups},
    }
    sources = " and ".join(_shown(path) for path in files)
    header = (
        f"# Generated from {sources}\n"
        "# by `python -m tests.prometheusrule`. Do not edit: change those and regenerate.\n"
    )
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
