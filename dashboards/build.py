"""Generate the dashboards' JSON from the `*.dashboard.py` files, or check that it is current.

Each `NAME.dashboard.py` in this folder defines a grafanalib `dashboard`; its JSON is written to
`json/NAME.json` (sorted keys, two-space indent, so diffs stay readable) and committed.
`python -m dashboards` regenerates; `python -m dashboards --check` exits 1 when a committed file
differs from what its source generates, or has no source.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder

__all__ = [
    "DASHBOARD_DIR",
    "JSON_DIR",
    "SUFFIX",
    "Generated",
    "generate",
    "load",
    "main",
    "render",
    "sources",
    "stale",
]

DASHBOARD_DIR = Path(__file__).resolve().parent
JSON_DIR = DASHBOARD_DIR / "json"
SUFFIX = ".dashboard.py"


@dataclass(frozen=True, slots=True)
class Generated:
    """One dashboard source, where its JSON goes, and the JSON it generates."""

    source: Path
    output: Path
    text: str


def sources(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def load(path: Path) -> Any:
    """The `dashboard` a `*.dashboard.py` file defines (grafanalib's convention)."""
    name = path.name.removesuffix(".py").replace(".", "_")
    spec = importlib.util.spec_from_file_location(f"_dashboard_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dashboard = getattr(module, "dashboard", None)
    if dashboard is None:
        raise ImportError(f"{path}: defines no `dashboard`")
    return dashboard


def render(dashboard: Any) -> str:
    return (
        json.dumps(dashboard.to_json_data(), sort_keys=True, indent=2, cls=DashboardEncoder) + "\n"
    )


def generate(directory: Path = DASHBOARD_DIR, json_dir: Path | None = None) -> list[Generated]:
    out = json_dir or directory / "json"
    return [
        Generated(path, out / (path.name.removesuffix(SUFFIX) + ".json"), render(load(path)))
        for path in sources(directory)
    ]


def stale(generated: Sequence[Generated], json_dir: Path = JSON_DIR) -> list[Path]:
    """Committed files that differ from what their source generates, are missing, or are orphans."""
    wrong = [g.output for g in generated if not g.output.exists() or g.output.read_text() != g.text]
    expected = {g.output for g in generated}
    orphans = [path for path in sorted(json_dir.glob("*.json")) if path not in expected]
    return wrong + orphans


def main(argv: Sequence[str] | None = None, *, json_dir: Path = JSON_DIR) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards", description="Generate the Grafana dashboards' JSON."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed JSON is not current"
    )
    args = parser.parse_args(argv)
    generated = generate(json_dir=json_dir)
    if args.check:
        outdated = stale(generated, json_dir)
        for path in outdated:
            print(f"stale: {path}", file=sys.stderr)
        if outdated:
            print("run `python -m dashboards` and commit the result", file=sys.stderr)
            return 1
        print(f"OK: {len(generated)} dashboard(s) current")
        return 0
    json_dir.mkdir(exist_ok=True)
    for g in generated:
        g.output.write_text(g.text)
        print(f"wrote {g.output}")
    return 0
