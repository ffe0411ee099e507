"""Reading real DMARC aggregate and SMTP TLS reports (tests/corpus/reports), field by field, by
the manifest that names each sample's source and licence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.reading.reports import (
    DmarcReport,
    TlsReport,
    Unreadable,
    parse_report,
    read_reports,
)

CORPUS = Path(__file__).parent / "corpus" / "reports"
SAMPLES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "manifest.yaml").read_text())["samples"]


def _read(name: str) -> DmarcReport | TlsReport | Unreadable:
    raw = (CORPUS / name).read_bytes()
    if name.endswith(".eml"):
        [found] = read_reports(raw)
        return found
    return parse_report(raw, name=name)


def _as_manifest(found: DmarcReport | TlsReport | Unreadable) -> dict[str, Any]:
    match found:
        case Unreadable():
            return {"problem": found.problem.value}
        case DmarcReport():
            return {
                "org": found.org,
                "report_id": found.report_id,
                "end": int(found.end),
                "rows": [
                    {
                        "source_ip": row.source_ip,
                        "count": row.count,
                        "header_from": row.header_from,
                        "disposition": row.disposition,
                        "dkim": row.dkim,
                        "spf": row.spf,
                    }
                    for row in found.rows
                ],
            }
        case TlsReport():
            return {
                "org": found.org,
                "report_id": found.report_id,
                "end": int(found.end),
                "policies": [
                    {
                        "policy_domain": policy.policy_domain,
                        "policy_type": policy.policy_type,
                        "successful": policy.successful,
                        "failed": policy.failed,
                        "failures": dict(policy.failures),
                    }
                    for policy in found.policies
                ],
            }


def test_report_corpus_manifest_names_every_file_with_its_source_and_licence() -> None:
    files = {path.name for path in CORPUS.iterdir()} - {"manifest.yaml", "README.md"}
    files.discard("LICENSE.parsedmarc")
    assert {sample["file"] for sample in SAMPLES} == files
    for sample in SAMPLES:
        assert sample["source"].startswith("https://github.com/"), sample["file"]
        assert sample["licence"] and sample["changes"], sample["file"]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["file"] for s in SAMPLES])
def test_report_corpus_sample_reads_as_its_manifest_says(sample: dict[str, Any]) -> None:
    found = _read(sample["file"])
    assert found.kind.value == sample["kind"]
    assert _as_manifest(found) == sample["expected"]
