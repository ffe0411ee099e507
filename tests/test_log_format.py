"""Log lines as text, logfmt or JSON: probe lines carry route, mailbox and probe_id as fields."""

from __future__ import annotations

import io
import json
import logging

from agent.app.logs import LogFormat, configure_logging
from agent.log_fields import probe_fields
from agent.secrets import MASK


def _log(fmt: LogFormat) -> str:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(logging.INFO, ["hunter2-password"], log_format=fmt)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        fields = probe_fields(route="relay", mailbox="gmail seed", probe_id="01hzjb7m8k")
        logging.getLogger("agent.test").info("probe %s: %s", "01hzjb7m8k", "inbox", extra=fields)
        logging.getLogger("agent.test").warning("login with hunter2-password failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return stream.getvalue()


def test_text_format_keeps_the_readable_message() -> None:
    lines = _log(LogFormat.TEXT).splitlines()
    assert lines[0].endswith(" INFO agent.test: probe 01hzjb7m8k: inbox")
    assert lines[1].endswith(f" WARNING agent.test: login with {MASK} failed")


def test_logfmt_format_writes_probe_fields_and_quotes_values_with_spaces() -> None:
    first, second = _log(LogFormat.LOGFMT).splitlines()
    assert first.startswith("ts=")
    assert first.split(" ", 1)[1] == (
        'level=info logger=agent.test msg="probe 01hzjb7m8k: inbox" route=relay '
        'mailbox="gmail seed" probe_id=01hzjb7m8k'
    )
    assert f'msg="login with {MASK} failed"' in second
    assert "hunter2" not in second and "route=" not in second


def test_json_format_writes_one_object_per_line_with_probe_fields() -> None:
    first, second = (json.loads(line) for line in _log(LogFormat.JSON).splitlines())
    assert {k: v for k, v in first.items() if k != "ts"} == {
        "level": "info",
        "logger": "agent.test",
        "msg": "probe 01hzjb7m8k: inbox",
        "route": "relay",
        "mailbox": "gmail seed",
        "probe_id": "01hzjb7m8k",
    }
    assert second["msg"] == f"login with {MASK} failed"
