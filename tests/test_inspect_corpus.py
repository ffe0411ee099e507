"""Both real-sample corpora, read through `deliverability-agent inspect --json` as a user would.

tests/test_authresults_corpus.py and tests/test_bounces_corpus.py check the reading code on the
same manifests; this proves the command shows the same verdicts and fields, so "why did it say
dkim=fail?" gets the answer the watcher acted on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app.cli import main

CORPUS = Path(__file__).parent / "corpus"


def _manifest(name: str) -> list[dict[str, Any]]:
    path = CORPUS / name / "manifest.yaml"
    samples: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))["samples"]
    return samples


AUTH = _manifest("authresults")
BOUNCES = _manifest("bounces")


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["inspect", "--json", *args]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    report: dict[str, Any] = json.loads(line)
    return report


@pytest.mark.parametrize("entry", AUTH, ids=[entry["file"] for entry in AUTH])
def test_inspect_shows_the_verdicts_of_each_authentication_results_sample(
    entry: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    if "trusted" in entry:
        rules = [arg for rule in entry["trusted"] for arg in ("--trusted-authserv-id", rule)]
    else:
        rules = ["--provider", entry["provider"]]
    auth = _inspect(capsys, *rules, str(CORPUS / "authresults" / entry["file"]))["auth"]
    shown = {key: auth[key] for key in ("spf", "dkim", "dmarc", "arc", "methods")}
    assert shown == entry["expected"]


@pytest.mark.parametrize("entry", BOUNCES, ids=[entry["file"] for entry in BOUNCES])
def test_inspect_shows_the_kind_and_fields_of_each_bounce_sample(
    entry: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report = _inspect(capsys, str(CORPUS / "bounces" / entry["file"]))
    expected = entry["expected"]
    assert report["kind"] == expected["kind"]
    if expected["bounce"] is None:
        assert report["bounce"] is None
        return
    shown = {key: report["bounce"][key] for key in expected["bounce"]}
    assert shown == expected["bounce"]
