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
from agent.reading.bounces import BounceFields, read_bounce, read_bounce_fields
from agent.reading.probe_token import PROBE_HEADER, KeyRing, parse_probe_header
from agent.reading.triage import TriageKind, triage_message
from agent.store.ledger import spam_verdict_json

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
        "methods": {name: str(result) for name, result in verdicts.methods.items()},
        "details": [
            {
                "method": detail.method,
                "result": str(detail.result),
                "raw_result": detail.raw_result,
                "authserv_id": detail.authserv_id,
                "reason": detail.reason,
                "comment": detail.comment,
                "properties": dict(detail.properties),
            }
            for detail in verdicts.details
        ],
        "dkim_signatures": [
            {
                "domain": signature.domain,
                "selector": signature.selector,
                "result": str(signature.result),
            }
            for signature in verdicts.dkim_signatures
        ],
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
        "spam": [spam_verdict_json(verdict) for verdict in triage.spam],
        "bounce": None,
        "probe": _probe(raw, triage.kind, triage.probe_id_signed, options),
    }
    if options.keys is None and triage.reason == "probe signature invalid":
        report["reason"] = "probe header (token not checked: no --config)"
    if triage.kind in (TriageKind.PROBE, TriageKind.FORGED):
        return report
    # Bounce or not, and what it says about the recipient: the bounce watcher's own reading.
    reading = read_bounce_fields(raw, recipient=options.recipient)
    report["kind"], report["reason"] = str(reading.kind), reading.why
    if reading.bounce is not None:
        report["bounce"] = _bounce(reading.bounce)
        if options.keys is not None:
            proven = read_bounce(raw, keys=keys)
            report["bounce"]["probe"] = {
                "id": proven.probe_id,
                "proof": _word(proven.proof),
                "forgery": proven.forgery,
            }
    return report


def _bounce(fields: BounceFields) -> dict[str, Any]:
    return {
        "type": str(fields.bounce_type),
        "status": fields.status,
        "smtp_code": fields.smtp_code,
        "recipient": fields.recipient,
        "recipient_invalid": fields.recipient_invalid,
        "reason": str(fields.reason),
        "action": fields.action,
        "reporting_mta": fields.reporting_mta,
        "original_message_id": fields.original_message_id,
    }


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
    for signature in auth["dkim_signatures"]:
        lines.append(f"    dkim signature: {_pairs(signature)}")
    if report["auth_unreadable_fields"]:
        lines.append(
            f"  {report['auth_unreadable_fields']} Authentication-Results field(s) unreadable"
        )
    for verdict in report["spam"]:
        lines.append(f"  spam: {_pairs(verdict)}")
    if report["bounce"] is not None:
        bounce = dict(report["bounce"])
        proven = bounce.pop("probe", None)
        lines.append(f"  bounce: {_pairs(bounce)}")
        if proven is not None:
            lines.append(f"  bounce of probe: {_pairs(proven)}")
    if report["probe"] is not None:
        lines.append(f"  probe: {report['probe']['id']}, token {report['probe']['token']}")
    return "\n".join(lines)


def _detail_line(detail: dict[str, Any]) -> str:
    """`spf=pass (as written: ...) [authserv-id] reason=... smtp.mailfrom=...`."""
    text = f"{detail['method']}={detail['result']}"
    if detail["raw_result"] != detail["result"]:
        text += f" (written {detail['raw_result']})"
    if detail["authserv_id"]:
        text += f" by {detail['authserv_id']}"
    if detail["comment"]:
        text += f" ({detail['comment']})"
    if detail["reason"]:
        text += f' reason="{detail["reason"]}"'
    rest = _pairs(detail["properties"])
    return text if rest == "-" else f"{text} {rest}"


def _pairs(values: dict[str, Any]) -> str:
    shown = []
    for key, value in values.items():
        if value is None or value == [] or value == {} or value is False:
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
