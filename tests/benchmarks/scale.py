"""Benchmark: what the agent process costs at 100, 1,000 and 10,000 (route, mailbox) pairs.

    .venv/bin/python -m tests.benchmarks.scale [--sizes 100,1000,10000] [--page-timeout 60]
        [--shard-count 1]

Method: for each size N it writes a config of R routes x M mailboxes (R = M = sqrt(N), rounded
up to a square), every pair probed once an hour with the default jitter, where every SMTP route
and every IMAP server is 127.0.0.1 port 1: connections are refused at once, so the mail system
costs nothing and only the agent's own work is measured (probes end `error`, watchers back off).
It starts `deliverability-agent run` as a subprocess and measures, from outside:

- start -> /readyz answering 200 (polled every 50 ms);
- /metrics: the number of series (sample lines), its size, and the time of one scrape (median of
  three, after a first one);
- the status page: the time of one GET /, or "no answer" after --page-timeout seconds; then the
  median of five GETs each of a later page (`/?page=50`) and of a filtered list
  (`/?route=r001&outcome=error`), distinct URLs so no build is shared;
- peak RSS (VmHWM) and CPU time (user + system, all threads) of the agent process at that point;
- SIGTERM -> exit (bounded by the drain timeout; killed after 90 s).

With --shard-count S > 1 the agent runs as shard 0 of S (`--shard-index 0 --shard-count S`): one
replica of a sharded fleet, owning the seed mailboxes rendezvous hashing gives shard 0 (about
M/S of them, with all their pairs); "owned" is its share of the pairs.

Figures depend on the machine; the method is printed with them. Nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.sharding import owner
from tests.mailsystem.system import free_ports

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Figures:
    pairs: int
    owned_pairs: int
    routes: int
    mailboxes: int
    ready_seconds: float
    series: int
    metrics_bytes: int
    scrape_seconds: float
    page_seconds: float | None  # None: no answer within the timeout
    later_page_seconds: float | None
    filtered_seconds: float | None
    peak_rss_mib: float
    cpu_seconds: float
    stop_seconds: float | None  # None: had to be killed


def _config(directory: Path, routes: int, mailboxes: int, port: int) -> Path:
    refused = {"host": "127.0.0.1", "port": 1, "tls": "none"}
    data = {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(directory / "state"),
        "secret": "scale-benchmark-secret-0123456789",
        "log_level": "warning",
        "routes": [
            {
                "name": f"r{index:03d}",
                "from": "probe@bench.test",
                "ehlo_name": "bench.test",
                **refused,
            }
            for index in range(routes)
        ],
        "mailboxes": [
            {
                "name": f"m{index:03d}",
                "address": f"seed{index:03d}@seed.test",
                "allow_plaintext_auth": True,
                "auth": {"username": f"seed{index:03d}", "password": "bench-password-1"},
                **refused,
            }
            for index in range(mailboxes)
        ],
        "probes": {"interval": "1h"},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    peak_kib = int(hwm.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return peak_kib / 1024, cpu


def _page_median(url: str, timeout: float) -> float | None:
    times = []
    for attempt in range(5):
        begin = time.monotonic()
        try:
            # A distinct query each time: the HTTP server shares a build between equal requests.
            status, _ = _get(f"{url}&n={attempt}", timeout)
        except OSError:
            return None
        if status != 200:
            return None
        times.append(time.monotonic() - begin)
    return statistics.median(times)


def _measure(pairs: int, page_timeout: float, shard_count: int = 1) -> Figures:
    side = math.isqrt(pairs - 1) + 1
    owned = sum(1 for index in range(side) if owner(f"m{index:03d}", shard_count) == 0)
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as workdir:
        config = _config(Path(workdir), side, side, port)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)]
            + (
                ["--shard-index", "0", "--shard-count", str(shard_count)] if shard_count > 1 else []
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the agent exited with {process.returncode}")
                try:
                    if _get(f"{base}/readyz", 5)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            ready = time.monotonic() - started
            _get(f"{base}/metrics", 120)
            scrapes = []
            body = b""
            for _ in range(3):
                begin = time.monotonic()
                _, body = _get(f"{base}/metrics", 120)
                scrapes.append(time.monotonic() - begin)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            begin = time.monotonic()
            try:
                status, _ = _get(f"{base}/", page_timeout)
                page: float | None = time.monotonic() - begin if status == 200 else None
            except OSError:
                page = None
            later = _page_median(f"{base}/?page=50", page_timeout)
            filtered = _page_median(f"{base}/?route=r001&outcome=error", page_timeout)
            peak_rss, cpu = _proc_figures(process.pid)
            begin = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
                stop: float | None = time.monotonic() - begin
            except subprocess.TimeoutExpired:
                stop = None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Figures(
        pairs=side * side,
        owned_pairs=side * owned,
        routes=side,
        mailboxes=side,
        ready_seconds=ready,
        series=series,
        metrics_bytes=len(body),
        scrape_seconds=statistics.median(scrapes),
        page_seconds=page,
        later_page_seconds=later,
        filtered_seconds=filtered,
        peak_rss_mib=peak_rss,
        cpu_seconds=cpu,
        stop_seconds=stop,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="pair counts, comma-separated")
    parser.add_argument("--page-timeout", type=float, default=60.0)
    parser.add_argument("--shard-count", type=int, default=1, help="run as shard 0 of this many")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(__doc__.split("Method:", 1)[1].split("Figures depend", 1)[0].strip())
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    header = (
        "| pairs (R x M) | owned | start -> /readyz | series | series/pair | /metrics | scrape "
        "| status page (/, page 50, filtered) | peak RSS | CPU | SIGTERM -> exit |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in sizes:
        f = _measure(size, args.page_timeout, args.shard_count)
        page = " / ".join(
            f"{seconds:.2f} s" if seconds is not None else "no answer"
            for seconds in (f.page_seconds, f.later_page_seconds, f.filtered_seconds)
        )
        stop = f"{f.stop_seconds:.1f} s" if f.stop_seconds is not None else "killed"
        print(
            f"| {f.pairs} ({f.routes} x {f.mailboxes}) | {f.owned_pairs} "
            f"| {f.ready_seconds:.1f} s | {f.series} "
            f"| {f.series / f.owned_pairs:.1f} | {f.metrics_bytes / 1e6:.1f} MB "
            f"| {f.scrape_seconds:.2f} s | {page} | {f.peak_rss_mib:.0f} MiB "
            f"| {f.cpu_seconds:.1f} s | {stop} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
