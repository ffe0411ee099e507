"""Microsoft SNDS automated data access: `data.aspx` (IP data) and `ipStatus.aspx` (blocks).

Both are CSV without a header, fetched with the key in the query string
(https://sendersupport.olc.protection.outlook.com/snds/, "Automated Access"). Column order of
`data.aspx` as Microsoft's SNDS data page shows it and public parsers read it (undersfx/sndslib,
`search_ip_status`): IP address, activity start, activity end, RCPT commands, DATA commands,
message recipients, filter result (GREEN / YELLOW / RED), complaint rate ("< 0.1%" or "n%"), trap
message start, trap message end, trap hits, sample HELO, sample MAIL FROM (JMR P1), comments.
Times are "MM/DD/YYYY h:mm AM" in UTC. `ipStatus.aspx`: first IP, last IP, blocked ("Yes"),
reason. A row that is not that shape is counted and skipped; the CSV module does the splitting.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from agent.reputation.http import FeedHttp
from agent.reputation.model import FilterResult, SndsFetched, SndsIp

__all__ = ["OTHER", "SndsClient", "label_ips", "parse_data", "parse_ip_status"]

OTHER: Final = "other"
_LESS_THAN_BOUND: Final = 0.001  # "< 0.1%": recorded as its bound
_MAX_RANGE: Final = 1 << 16  # a blocked range wider than a /16 is not believable: skipped
_WORSE: Final = {FilterResult.GREEN: 0, FilterResult.YELLOW: 1, FilterResult.RED: 2}


@dataclass(frozen=True, slots=True)
class BlockedRange:
    first: ipaddress.IPv4Address | ipaddress.IPv6Address
    last: ipaddress.IPv4Address | ipaddress.IPv6Address

    def __contains__(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return address.version == self.first.version and self.first <= address <= self.last  # type: ignore[operator]

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


def _rows(body: bytes) -> Iterable[list[str]]:
    text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
    yield from csv.reader(io.StringIO(text, newline=""))


def _time(value: str) -> float:
    when = dt.datetime.strptime(value.strip(), "%m/%d/%Y %I:%M %p")
    return when.replace(tzinfo=dt.UTC).timestamp()


def _ratio(value: str) -> float:
    value = value.strip()
    if value.startswith("<"):
        return _LESS_THAN_BOUND
    number = float(value.removesuffix("%")) / 100
    if not 0.0 <= number <= 1.0:
        raise ValueError(value)
    return number


def _count(value: str) -> int:
    value = value.strip()
    if not value:
        return 0  # an empty trap-hits column: no trap period
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def parse_data(body: bytes) -> tuple[list[SndsIp], int]:
    """Each IP's newest activity period in a data.aspx answer, and the rows skipped."""
    newest: dict[str, SndsIp] = {}
    skipped = 0
    for row in _rows(body):
        if not row or all(not cell.strip() for cell in row):
            continue  # a blank line, the answer's last one
        try:
            if len(row) < 11:
                raise ValueError("short row")
            ip = str(ipaddress.ip_address(row[0].strip()))
            record = SndsIp(
                ip=ip,
                period_end=_time(row[2]),
                filter_result=FilterResult(row[6].strip().lower()),
                complaint_ratio=_ratio(row[7]),
                trap_hits=_count(row[10]),
                rcpt_commands=_count(row[3]),
                data_commands=_count(row[4]),
                recipients=_count(row[5]),
            )
            _time(row[1])  # the start must be a time too
        except ValueError:
            skipped += 1
            continue
        if ip not in newest or record.period_end >= newest[ip].period_end:
            newest[ip] = record
    return list(newest.values()), skipped


def parse_ip_status(body: bytes) -> tuple[list[BlockedRange], int]:
    """The blocked ranges of an ipStatus.aspx answer, and the rows skipped."""
    ranges: list[BlockedRange] = []
    skipped = 0
    for row in _rows(body):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            if len(row) < 3:
                raise ValueError("short row")
            first = ipaddress.ip_address(row[0].strip())
            last = ipaddress.ip_address(row[1].strip())
            if first.version != last.version or last < first:  # type: ignore[operator]
                raise ValueError("not a range")
            blocked = BlockedRange(first, last)
            if blocked.size > _MAX_RANGE:
                raise ValueError("range too wide")
        except ValueError:
            skipped += 1
            continue
        if row[2].strip().lower() == "yes":
            ranges.append(blocked)
    return ranges, skipped


def label_ips(seen: Iterable[str], configured: tuple[str, ...], cap: int) -> set[str]:
    """The IPs with a label of their own: the configured ones, else the first `cap` seen (in
    address order, so the choice is stable from one day to the next)."""
    if configured:
        return set(configured)
    ordered = sorted(
        set(seen), key=lambda ip: (ipaddress.ip_address(ip).version, ipaddress.ip_address(ip))
    )
    return set(ordered[:cap])


def combine(
    records: list[SndsIp],
    ranges: list[BlockedRange],
    *,
    configured: tuple[str, ...],
    cap: int,
    at: float,
    skipped: int,
) -> SndsFetched:
    """Per labelled IP its period and block state; the rest summed under `other`."""
    labelled = label_ips((r.ip for r in records), configured, cap)
    own = [r for r in records if r.ip in labelled]
    rest = [r for r in records if r.ip not in labelled]
    ips = sorted(own, key=lambda r: r.ip)
    if rest:
        ips.append(
            SndsIp(
                ip=OTHER,
                period_end=max(r.period_end for r in rest),
                filter_result=max((r.filter_result for r in rest), key=_WORSE.__getitem__),
                complaint_ratio=max(r.complaint_ratio for r in rest),
                trap_hits=sum(r.trap_hits for r in rest),
                rcpt_commands=sum(r.rcpt_commands for r in rest),
                data_commands=sum(r.data_commands for r in rest),
                recipients=sum(r.recipients for r in rest),
            )
        )
    shown = configured if configured else tuple(sorted(labelled))
    blocked = [(ip, any(ip in block for block in ranges)) for ip in shown]
    # A blocked range holding more addresses than labelled ones blocks some unlabelled IP.
    if any(block.size > sum(ip in block for ip in labelled) for block in ranges):
        blocked.append((OTHER, True))
    elif rest:
        blocked.append((OTHER, False))
    return SndsFetched(tuple(ips), tuple(blocked), at=at, malformed=skipped)


class SndsClient:
    """Fetches data.aspx and ipStatus.aspx with the key; the key never leaves this object."""

    def __init__(
        self,
        *,
        base_url: str,
        key: str,
        ips: tuple[str, ...],
        cap: int,
        http: FeedHttp,
        clock: Callable[[], float],
    ) -> None:
        self._base = base_url
        self._key = key
        self._ips = ips
        self._cap = cap
        self._http = http
        self._clock = clock

    async def fetch(self) -> SndsFetched:
        key = quote(self._key, safe="")
        data = await self._http.request("GET", f"{self._base}/data.aspx?key={key}")
        status = await self._http.request("GET", f"{self._base}/ipStatus.aspx?key={key}")
        # Up to MAX_BODY of CSV: read in a worker thread, so probing never waits for it.
        return await asyncio.to_thread(self._read, data, status, self._clock())

    def _read(self, data: bytes, status: bytes, at: float) -> SndsFetched:
        records, skipped_data = parse_data(data)
        ranges, skipped_status = parse_ip_status(status)
        return combine(
            records,
            ranges,
            configured=self._ips,
            cap=self._cap,
            at=at,
            skipped=skipped_data + skipped_status,
        )
