"""The user docs stay true: every exported metric and every outcome is documented in the README."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.model import Outcome
from agent.monitoring.catalog import CATALOG

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_metric_table_lists_every_metric_of_the_catalog() -> None:
    missing = [spec.name for spec in CATALOG if f"`{spec.name}`" not in README]
    assert not missing, f"add to the README metric table: {missing}"


def test_readme_names_every_outcome() -> None:
    missing = [outcome.value for outcome in Outcome if f"`{outcome.value}`" not in README]
    assert not missing, f"document these outcomes in the README: {missing}"


def test_readme_alert_table_lists_every_alert() -> None:
    rules_file = (
        Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.rules.yml"
    )
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    alerts = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    missing = [name for name in alerts if f"[`{name}`]" not in README]
    assert alerts and not missing, f"add to the README alert table: {missing}"
