"""How each provider signs its posts, checked in constant time, and the replay guards.

SendGrid: ECDSA P-256 / SHA-256 over the timestamp header followed by the body, base64 DER in
`X-Twilio-Email-Event-Webhook-Signature`. Mailgun: hex HMAC-SHA256 over timestamp + token with the
signing key, in the body; each token is taken once. Postmark: HTTP basic auth only (Postmark signs
nothing). Amazon SES: the SNS message signature (v1 RSA-SHA1, v2 RSA-SHA256) over the canonical
string of the message's fields, checked with the certificate from `SigningCertURL` (`agent.webhooks
.sns` fetches it only from an SNS host). Generic: hex HMAC-SHA256 over the timestamp header followed
by the body. Every signed timestamp must lie within `max_age` of now.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import Certificate

from agent.model import WebhookRefusal

__all__ = [
    "GENERIC_SIGNATURE_HEADER",
    "GENERIC_TIMESTAMP_HEADER",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "Refused",
    "TokenCache",
    "check_basic_auth",
    "check_timestamp",
    "sns_canonical",
    "verify_generic",
    "verify_mailgun",
    "verify_sendgrid",
    "verify_sns",
]

SENDGRID_SIGNATURE_HEADER: Final = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP_HEADER: Final = "x-twilio-email-event-webhook-timestamp"
GENERIC_SIGNATURE_HEADER: Final = "x-deliverability-signature"
GENERIC_TIMESTAMP_HEADER: Final = "x-deliverability-timestamp"

_STATUS: Final = {
    WebhookRefusal.UNSIGNED: 401,
    WebhookRefusal.BAD_SIGNATURE: 403,
    WebhookRefusal.REPLAYED: 403,
    WebhookRefusal.TOO_LARGE: 413,
    WebhookRefusal.MALFORMED: 400,
    WebhookRefusal.CERTIFICATE: 403,
}


class Refused(Exception):
    """A post that is not taken: the reason (a bounded label) and the HTTP status to answer.
    The message says why for the log; it never holds a secret or the body."""

    def __init__(self, reason: WebhookRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = _STATUS[reason]


def check_timestamp(raw: object, *, now: float, max_age: float) -> float:
    """The signed timestamp as epoch seconds; Refused when missing, unreadable or too far off."""
    if raw is None or raw == "":
        raise Refused(WebhookRefusal.UNSIGNED, "no signed timestamp")
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise Refused(WebhookRefusal.MALFORMED, "the signed timestamp is not a number") from None
    if not abs(now - value) <= max_age:  # also refuses NaN
        raise Refused(
            WebhookRefusal.REPLAYED,
            f"the signed timestamp is {now - value:.0f} s from now (window {max_age:g} s)",
        )
    return value


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> None:
    signature = headers.get(SENDGRID_SIGNATURE_HEADER)
    timestamp = headers.get(SENDGRID_TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Refused(WebhookRefusal.UNSIGNED, "no SendGrid signature or timestamp header")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, timestamp.encode("latin-1") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(
            WebhookRefusal.BAD_SIGNATURE, "the SendGrid signature does not verify"
        ) from None
    # Checked after the signature: a forged post must not learn what the window is.
    check_timestamp(timestamp, now=now, max_age=max_age)


class TokenCache:
    """Mailgun tokens already taken, each kept as long as its timestamp could still pass the
    window, and at most `capacity` of them (the oldest forgotten first). Thread-safe."""

    def __init__(self, *, capacity: int = 10000) -> None:
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def take(self, token: str, *, expires_at: float, now: float) -> bool:
        """True the first time `token` is taken; False when it was taken before."""
        with self._lock:
            while self._seen:
                oldest, expiry = next(iter(self._seen.items()))
                if expiry > now and len(self._seen) < self._capacity:
                    break
                del self._seen[oldest]
            if token in self._seen:
                return False
            self._seen[token] = expires_at
            return True

    def __len__(self) -> int:
        return len(self._seen)


def verify_mailgun(
    signing_key: bytes, payload: Any, tokens: TokenCache, *, now: float, max_age: float
) -> None:
    signature = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(signature, dict):
        raise Refused(WebhookRefusal.UNSIGNED, "no Mailgun signature object")
    timestamp, token, digest = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, str | int) and str(v) for v in (timestamp, token, digest)):
        raise Refused(WebhookRefusal.UNSIGNED, "the Mailgun signature lacks a field")
    expected = hmac.new(signing_key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(digest).lower()):
        raise Refused(WebhookRefusal.BAD_SIGNATURE, "the Mailgun signature does not verify")
    signed_at = check_timestamp(timestamp, now=now, max_age=max_age)
    if not tokens.take(str(token), expires_at=signed_at + max_age, now=now):
        raise Refused(WebhookRefusal.REPLAYED, "the Mailgun token was already used")


def check_basic_auth(username: str, password: str, header: str | None) -> None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise Refused(WebhookRefusal.UNSIGNED, "no basic auth credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(WebhookRefusal.MALFORMED, "unreadable basic auth credentials") from None
    user, sep, secret = decoded.partition(b":")
    # Both compared every time, so the answer takes as long whichever one is wrong.
    user_ok = hmac.compare_digest(user, username.encode())
    password_ok = hmac.compare_digest(secret, password.encode())
    if not (sep and user_ok and password_ok):
        raise Refused(WebhookRefusal.BAD_SIGNATURE, "wrong basic auth credentials")


def verify_generic(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float, max_age: float
) -> None:
    signature = headers.get(GENERIC_SIGNATURE_HEADER)
    timestamp = headers.get(GENERIC_TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Refused(WebhookRefusal.UNSIGNED, "no signature or timestamp header")
    expected = hmac.new(secret, timestamp.encode("latin-1") + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Refused(WebhookRefusal.BAD_SIGNATURE, "the HMAC signature does not verify")
    check_timestamp(timestamp, now=now, max_age=max_age)


# The fields each SNS message type signs, in this order (AWS "Verifying the signatures of Amazon
# SNS messages"); Subject only when the message has one.
_SNS_FIELDS: Final = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}


def sns_canonical(message: Mapping[str, Any]) -> bytes:
    """The string an SNS message's signature covers; Refused (malformed) when a field is missing."""
    fields = _SNS_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise Refused(WebhookRefusal.MALFORMED, "not an SNS message type")
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Refused(WebhookRefusal.MALFORMED, f"the SNS message has no {name}")
        lines += [name, value]
    return ("\n".join(lines) + "\n").encode()


def verify_sns(message: Mapping[str, Any], certificate: Callable[[str], Certificate]) -> None:
    """Check an SNS message's signature with the certificate at its SigningCertURL."""
    version = message.get("SignatureVersion")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # SNS signature version 1 is SHA1withRSA
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise Refused(WebhookRefusal.UNSIGNED, "no SNS signature of version 1 or 2")
    signature, url = message.get("Signature"), message.get("SigningCertURL")
    if not isinstance(signature, str) or not isinstance(url, str):
        raise Refused(WebhookRefusal.UNSIGNED, "no SNS Signature or SigningCertURL")
    canonical = sns_canonical(message)
    public_key = certificate(url).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise Refused(WebhookRefusal.CERTIFICATE, "the SNS certificate's key is not RSA")
    try:
        public_key.verify(
            base64.b64decode(signature, validate=True), canonical, padding.PKCS1v15(), algorithm
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused(WebhookRefusal.BAD_SIGNATURE, "the SNS signature does not verify") from None
