"""The structured fields a log line about a probe carries: route, mailbox and probe id.

Passed as `extra=probe_fields(...)` on the log call, so the logfmt and JSON formats
(`agent.app.logs`) can write them as fields of their own, the way blackbox_exporter's probe logger
does, while the readable text format keeps its message as it is.
"""

from __future__ import annotations

__all__ = ["PROBE_FIELDS", "probe_fields"]

PROBE_FIELDS = ("route", "mailbox", "probe_id")


def probe_fields(
    *, route: str | None = None, mailbox: str | None = None, probe_id: str | None = None
) -> dict[str, str]:
    """The `extra` of a log call about a probe; fields that are not known are left out."""
    values = {"route": route, "mailbox": mailbox, "probe_id": probe_id}
    return {name: value for name, value in values.items() if value is not None}
