"""ESP event webhooks: verified posts in, `EspEvent`s out.

`signatures` verifies a post the way its provider signs it (pure, but for the SNS certificate,
which `sns` fetches and caches); `payloads` turns a verified body into events (pure); `receiver`
is what the HTTP server calls on a worker thread: it refuses, or hands the events to the agent's
loop, where `agent.probing.esp` matches them to probes and writes through `probing.outcomes`.
"""

from __future__ import annotations

from agent.webhooks.receiver import MAX_BODY_BYTES, WebhookReceiver, WebhookReply
from agent.webhooks.signatures import Refused

__all__ = ["MAX_BODY_BYTES", "Refused", "WebhookReceiver", "WebhookReply"]
