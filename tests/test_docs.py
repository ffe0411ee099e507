"""The user docs stay true: every exported metric and every outcome is documented in the README."""

from __future__ import annotations

from pathlib import Path

from agent.metrics import CATALOG
from agent.model import Outcome

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_metric_table_lists_every_metric_of_the_catalog() -> None:
    missing = [spec.name for spec in CATALOG if f"`{spec.name}`" not in README]
    assert not missing, f"add to the README metric table: {missing}"


def test_readme_names_every_outcome() -> None:
    missing = [outcome.value for outcome in Outcome if f"`{outcome.value}`" not in README]
    assert not missing, f"document these outcomes in the README: {missing}"
