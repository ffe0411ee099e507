"""The event loop the agent's commands run on: uvloop where it is installed, else asyncio's own.

A probe is a dozen network round trips (the SMTP session, the IMAP watcher's push, search and
fetch), each a wake-up of the loop and a pass through its transports; uvloop (libuv, in Cython)
does that part with less CPU than the pure-Python loop: on the test mail system a whole probe costs
1-2 ms less, 10-20 % (`tests.benchmarks.probe_loop --event-loop`). Both loops run the same code;
`--event-loop asyncio` is there to rule the loop out when chasing a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "EventLoopKind",
    "add_event_loop_option",
    "default_kind",
    "loop_factory",
    "loop_kind_of",
    "run",
    "unavailable",
]

T = TypeVar("T")


class EventLoopKind(enum.StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


def unavailable(kind: EventLoopKind) -> str | None:
    """Why the loop of `kind` cannot run here, or None when it can."""
    if kind is EventLoopKind.ASYNCIO:
        return None
    try:
        import uvloop  # noqa: F401
    except ImportError:  # not installed, or a platform it does not build on (Windows)
        return (
            "--event-loop uvloop: uvloop is not installed (pip install uvloop); "
            "use --event-loop asyncio"
        )
    return None


def default_kind() -> EventLoopKind:
    return EventLoopKind.ASYNCIO if unavailable(EventLoopKind.UVLOOP) else EventLoopKind.UVLOOP


def add_event_loop_option(parser: argparse.ArgumentParser) -> None:
    """`--event-loop uvloop|asyncio`, default `default_kind()`; read it with
    `EventLoopKind(args.event_loop)`."""
    parser.add_argument(
        "--event-loop",
        choices=[kind.value for kind in EventLoopKind],
        default=default_kind().value,
        help="uvloop (the default where installed: less CPU per probe) or asyncio's own",
    )


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner` needs for `kind`; None is asyncio's default loop."""
    if kind is EventLoopKind.ASYNCIO:
        return None
    if (reason := unavailable(kind)) is not None:
        raise ValueError(reason)
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind | None = None) -> T:
    """`asyncio.run(main)` on the loop of `kind` (default: uvloop when installed)."""
    try:
        factory = loop_factory(default_kind() if kind is None else kind)
    except ValueError:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_kind_of(loop: asyncio.AbstractEventLoop) -> EventLoopKind:
    """Which kind `loop` is, for the start-up log line."""
    module = type(loop).__module__
    return EventLoopKind.UVLOOP if module.startswith("uvloop") else EventLoopKind.ASYNCIO
