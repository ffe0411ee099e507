"""`deliverability-agent inspect`: what the agent concludes from a saved message, and why.

A user who asks "why did it say dkim=fail?" saves the message (or only its header block) and runs
it through the very reading code the watchers use: triage (probe, bounce, auto-reply, other), the
trusted Authentication-Results fields and every verdict in them, and a bounce's fields. With a
config the probe token is verified against its secret and the mailbox's trust rules apply;
without one, the rules come from the command line and tokens are not checked.

Pure but for reading the files: `inspect_message` turns bytes into one report (a JSON-ready dict
in the public `--json` format, see the README's "Commands"), `render_text` prints it for humans.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from agent.model import AuthVerdicts
from agent.reading.bounces import read_bounce
from agent.reading.probe_token import PROBE_HEADER, KeyRing, parse_probe_header
from agent.reading.triage import TriageKind, triage_message

__all__ = ["InspectOptions", "inspect_message", "read_inputs", "render_json", "render_text"]

# Triage kinds as the public format names them: a forged probe is still a probe (its token is
# reported invalid), and what is neither ours nor a reply is "other".
_KINDS = {
    TriageKind.PROBE: "probe",
    TriageKind.FORGED: "probe",
    TriageKind.BOUNCE: "bounce",
    TriageKind.AUTO_REPLY: "auto_reply",
    TriageKind.UNRELATED: "other",
    TriageKind.MALFORMED: "other",
}


@dataclass(frozen=True, slots=True)
class InspectOptions:
    """How to read: the keys that verify probe tokens (None: not checked) and the trust rules."""

    keys: KeyRing | None
    trusted_authserv_ids: tuple[str, ...] = ()
    recipient: str | None = None  # the seed address, when a mailbox is named


def _unchecking_keys() -> KeyRing:
    # A throwaway secret: without the agent's secret nothing can be verified, so nothing is.
    return KeyRing(secrets.token_bytes(32))


def _auth(verdicts: AuthVerdicts) -> dict[str, Any]:
    summary = {method.value: _word(result) for method, result in verdicts.items()}
    return {
        **summary,
        "methods": {name: result for name, result in summary.items() if result is not None},
        "details": [],
    }


def _word(value: object | None) -> str | None:
    return None if value is None else str(value)


def inspect_message(raw: bytes, options: InspectOptions) -> dict[str, Any]:
    """The report on one message: kind, why, the verdicts, the bounce and the probe token."""
    keys = options.keys or _unchecking_keys()
    triage = triage_message(raw, keys=keys, trusted_authserv_ids=options.trusted_authserv_ids)
    report: dict[str, Any] = {
        "kind": _KINDS[triage.kind],
        "reason": triage.reason,
        "auth": _auth(triage.auth),
        "auth_unreadable_fields": triage.auth_unparseable,
        "spam": [],
        "bounce": None,
        "probe": _probe(raw, triage.kind, triage.probe_id_signed, options),
    }
    if options.keys is None and triage.reason == "probe signature invalid":
        report["reason"] = "probe header (token not checked: no --config)"
    if triage.kind is TriageKind.BOUNCE:
        bounce = read_bounce(raw, keys=keys)
        report["bounce"] = {
            "type": _word(bounce.bounce_type),
            "status": bounce.status,
            "recipients": list(bounce.recipients),
            "reporting_mta": bounce.reporting_mta,
            "probe_id": bounce.probe_id,
            "proof": _word(bounce.proof) if options.keys is not None else None,
            "forgery": bounce.forgery if options.keys is not None else None,
        }
    return report


def _probe(
    raw: bytes, kind: TriageKind, signed: bool, options: InspectOptions
) -> dict[str, Any] | None:
    if kind not in (TriageKind.PROBE, TriageKind.FORGED):
        return None
    headers = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    token = parse_probe_header(str(headers.get(PROBE_HEADER, "")))
    probe_id = token.probe_id if token is not None else None
    if token is None:
        verdict = "malformed"
    elif options.keys is None:
        verdict = "not checked (no --config)"
    else:
        verdict = "valid" if signed else "invalid"
    return {"id": probe_id, "token": verdict}


def render_json(file: str, report: dict[str, Any]) -> str:
    """One line of `--json`: the report with the file it came from first."""
    return json.dumps({"file": file, **report}, ensure_ascii=False)


def render_text(file: str, report: dict[str, Any]) -> str:
    """The report for humans: a heading line per file, then one line per finding."""
    lines = [f"{file}: {report['kind']} ({report['reason']})"]
    auth = report["auth"]
    verdicts = " ".join(f"{name}={result}" for name, result in auth["methods"].items())
    lines.append(f"  authentication: {verdicts or 'no trusted verdict'}")
    for detail in auth["details"]:
        lines.append(f"    {_detail_line(detail)}")
    if report["auth_unreadable_fields"]:
        lines.append(
            f"  {report['auth_unreadable_fields']} Authentication-Results field(s) unreadable"
        )
    for verdict in report["spam"]:
        lines.append(f"  spam: {_pairs(verdict)}")
    if report["bounce"] is not None:
        lines.append(f"  bounce: {_pairs(report['bounce'])}")
    if report["probe"] is not None:
        lines.append(f"  probe: {report['probe']['id']}, token {report['probe']['token']}")
    return "\n".join(lines)


def _detail_line(detail: dict[str, Any]) -> str:
    return _pairs(detail)


def _pairs(values: dict[str, Any]) -> str:
    shown = []
    for key, value in values.items():
        if value is None or value == [] or value == {}:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        shown.append(f"{key}={text}")
    return " ".join(shown) or "-"


def read_inputs(paths: Sequence[Path]) -> list[tuple[Path, bytes | OSError]]:
    """Each path with its bytes, or the error that kept it from being read."""
    inputs: list[tuple[Path, bytes | OSError]] = []
    for path in paths:
        try:
            inputs.append((path, path.read_bytes()))
        except OSError as exc:
            inputs.append((path, exc))
    return inputs
