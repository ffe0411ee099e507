"""The agent's event loop: uvloop by default where installed, asyncio's on request."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agent.app import event_loop
from agent.app.cli import main
from agent.app.event_loop import EventLoopKind


async def _kind_of_running_loop() -> EventLoopKind:
    return event_loop.loop_kind_of(asyncio.get_running_loop())


def test_uvloop_is_the_default_where_installed() -> None:
    assert event_loop.unavailable(EventLoopKind.UVLOOP) is None  # a dependency on Linux
    assert event_loop.default_kind() is EventLoopKind.UVLOOP
    assert event_loop.run(_kind_of_running_loop()) is EventLoopKind.UVLOOP


def test_asyncio_loop_on_request() -> None:
    kind = event_loop.run(_kind_of_running_loop(), EventLoopKind.ASYNCIO)
    assert kind is EventLoopKind.ASYNCIO


def test_without_uvloop_the_default_is_asyncio_and_asking_for_it_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop.default_kind() is EventLoopKind.ASYNCIO
    reason = event_loop.unavailable(EventLoopKind.UVLOOP)
    assert reason is not None and "uvloop is not installed" in reason
    with pytest.raises(ValueError, match="use --event-loop asyncio"):
        event_loop.run(_kind_of_running_loop(), EventLoopKind.UVLOOP)
    code = main(["once", "--config", "config.yaml", "--event-loop", "uvloop"])
    assert code == 2
    assert "uvloop is not installed" in capsys.readouterr().err
