"""`deliverability-agent` as a real process in tests, with its log lines readable as they come."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from queue import Empty, Queue

import pytest

__all__ = ["WAIT", "AgentProcess", "agent_command"]

WAIT = 60.0  # generous bound on any single wait; tests never pass or fail on timing


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


class AgentProcess:
    """`deliverability-agent run` in a subprocess, with its log lines readable as they come."""

    def __init__(
        self, config: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            agent_command("run", "--config", str(config), *args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: Queue[str] = Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, text: str) -> str:
        """The first log line (from now on) that contains `text`."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except Empty:
                pytest.fail(f"no log line with {text!r}; log so far:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=WAIT)
