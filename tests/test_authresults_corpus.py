"""Every real Authentication-Results sample of tests/corpus/authresults/ reads as its manifest says.

The manifest (`manifest.yaml`) names, per sample, the trust rules (a `provider` profile or a
`trusted` list) and the expected verdicts: the four summaries and every method the trusted fields
report, in RFC 8601's words; null means the method is not reported at all. Samples are parsed the
way the triage parses a fetched message (`compat32`), and with LF and CRLF line ends.
"""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.model import AuthVerdicts
from agent.providers import PROVIDER_TRUST, trust_rules_for
from agent.reading.authresults import read_auth_results

CORPUS = Path(__file__).parent / "corpus" / "authresults"
MANIFEST: list[dict[str, Any]] = yaml.safe_load(
    (CORPUS / "manifest.yaml").read_text(encoding="utf-8")
)["samples"]
REQUIRED = {"file", "source", "licence", "changes", "expected"}


def _rules(entry: dict[str, Any]) -> list[str]:
    if "trusted" in entry:
        return [str(rule) for rule in entry["trusted"]]
    return [str(rule) for rule in trust_rules_for(str(entry["provider"]))]


def _found(verdicts: AuthVerdicts) -> dict[str, Any]:
    return {
        "spf": verdicts.spf,
        "dkim": verdicts.dkim,
        "dmarc": verdicts.dmarc,
        "arc": verdicts.arc,
        "methods": dict(verdicts.methods),
    }


def test_the_corpus_has_at_least_40_samples_each_with_its_provenance() -> None:
    assert len(MANIFEST) >= 40
    for entry in MANIFEST:
        assert set(entry) >= REQUIRED, entry["file"]
        assert ("provider" in entry) != ("trusted" in entry), entry["file"]
        assert entry["source"].startswith("https://"), entry["file"]
        assert entry["licence"] and entry["changes"], entry["file"]
    files = {path.name for path in CORPUS.iterdir()} - {"manifest.yaml", "README.md"}
    assert files == {entry["file"] for entry in MANIFEST}


def test_every_provider_named_in_the_corpus_has_a_profile() -> None:
    providers = {entry["provider"] for entry in MANIFEST if "provider" in entry}
    assert providers <= set(PROVIDER_TRUST)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("entry", MANIFEST, ids=lambda entry: str(entry["file"]))
def test_each_sample_reads_as_its_manifest_expects(entry: dict[str, Any], crlf: bool) -> None:
    raw = (CORPUS / entry["file"]).read_bytes().replace(b"\r\n", b"\n")
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    message = BytesParser(policy=policy.compat32).parsebytes(raw)
    reading = read_auth_results(message, trusted_authserv_ids=_rules(entry))
    assert _found(reading.verdicts) == entry["expected"]
