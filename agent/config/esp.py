"""The `esp` section of a route: its ESP's event webhook (how posts are verified) and matching.

Off unless configured. Each kind needs its own credential and refuses the others', so a key
pasted under the wrong name is an error at load, not a webhook that refuses every post.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from pathlib import Path
from typing import Annotated, Any, Final

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from pydantic import BeforeValidator, Field

from agent.config.base import _Model
from agent.config.credentials import Auth
from agent.config.errors import _invalid, _Problems
from agent.config.interpolation import _fail_closed
from agent.config.scalars import _duration
from agent.model import EspKind
from agent.secrets import Secret

__all__ = ["Esp", "EspMatch", "EspWebhook", "sendgrid_public_key"]


class EspMatch(enum.StrEnum):
    """How an event finds its probe."""

    MESSAGE_ID = "message_id"  # the ESP's id from the 250 reply to end of data, stored at send
    METADATA = "metadata"  # the probe id the agent passes in the ESP's metadata header


# The key each kind needs; every other credential key is refused for it.
_CREDENTIAL: Final = {
    EspKind.SENDGRID: "public_key",
    EspKind.SES: "topic_arn",
    EspKind.MAILGUN: "signing_key",
    EspKind.POSTMARK: "basic_auth",
    EspKind.GENERIC: "hmac_secret",
}
# Mailgun's and Postmark's SMTP replies carry no id the events repeat: metadata is the way there.
_DEFAULT_MATCH: Final = {
    EspKind.SENDGRID: EspMatch.MESSAGE_ID,
    EspKind.SES: EspMatch.MESSAGE_ID,
    EspKind.MAILGUN: EspMatch.METADATA,
    EspKind.POSTMARK: EspMatch.METADATA,
    EspKind.GENERIC: EspMatch.MESSAGE_ID,
}
_TOPIC_ARN_RE: Final = re.compile(r"arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")
_HMAC_MIN: Final = 16  # characters of the generic webhook's HMAC secret


def sendgrid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The P-256 key of SendGrid's "Verification Key" (base64 DER, as SendGrid shows it, or PEM);
    ValueError when it is not one."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("not a base64 DER or PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def _public_key(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("expected SendGrid's verification key (base64 DER or PEM)")
    try:
        sendgrid_public_key(value)
    except ValueError as exc:
        raise _invalid(
            f"expected SendGrid's verification key, an ECDSA P-256 public key ({exc})", show=False
        ) from None
    return value


def _topic_arn(value: Any) -> str:
    if not isinstance(value, str) or not _TOPIC_ARN_RE.fullmatch(value):
        raise _invalid("expected an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:ses")
    return value


class EspWebhook(_Model):
    """How posts to /webhooks/<route> are verified; one credential, the one the kind uses."""

    public_key: Annotated[str, BeforeValidator(_public_key)] | None = None  # sendgrid
    signing_key: Secret | None = None  # mailgun: the HTTP webhook signing key
    basic_auth: Auth | None = None  # postmark: the user and password in the webhook URL
    hmac_secret: Secret | None = None  # generic
    # ses: posts are signed by AWS for any topic, so only this topic's are taken.
    topic_arn: Annotated[str, BeforeValidator(_topic_arn)] | None = None
    confirm_subscription: bool = False  # ses: confirm the SNS subscription instead of logging it
    # Posts whose signed timestamp is further than this from now are refused as replays.
    max_age: Annotated[float, _duration(minimum=30.0, maximum=86400.0)] = 300.0


class Esp(_Model):
    """The route is an ESP's SMTP relay: its events come to POST /webhooks/<route>."""

    kind: EspKind
    webhook: EspWebhook
    match: EspMatch = EspMatch.MESSAGE_ID  # default by kind, filled in by _prepare
    # The metadata key that carries the probe id (SendGrid unique_args, Mailgun variables, SES
    # message tags, Postmark X-PM-Metadata-<key>).
    metadata_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")] = "probe"

    @classmethod
    def _prepare(cls, data: dict[str, Any], problems: _Problems, base_dir: Path) -> None:
        try:
            kind = EspKind(str(data.get("kind")))
        except ValueError:
            return  # the kind field reports it
        data.setdefault("match", _DEFAULT_MATCH[kind].value)
        webhook = data.get("webhook")
        if not isinstance(webhook, dict):
            return
        wanted = _CREDENTIAL[kind]
        if wanted not in webhook:
            problems.add(("webhook", wanted), f"missing required key for kind {kind.value}")
        for other in set(_CREDENTIAL.values()) - {wanted}:
            if other in webhook:
                problems.add(
                    ("webhook", other),
                    f"expected {wanted} for kind {kind.value}, not {other}",
                )
        if kind is not EspKind.SES and "confirm_subscription" in webhook:
            problems.add(("webhook", "confirm_subscription"), "expected only with kind ses")
        secret = webhook.get("hmac_secret")
        if kind is EspKind.GENERIC and isinstance(secret, str) and len(secret) < _HMAC_MIN:
            problems.add(("webhook", "hmac_secret"), f"expected at least {_HMAC_MIN} characters")

    def _check(self, problems: _Problems) -> None:
        for key in ("signing_key", "hmac_secret"):
            value = getattr(self.webhook, key)
            if value is not None:
                _fail_closed(value, f"webhook.{key}", problems)
