"""DMARC aggregate and SMTP TLS reports from report mailboxes, counted once, as metrics."""

from agent.reports.reader import LabelCap, ReportReader
from agent.reports.store import ReportStore

__all__ = ["LabelCap", "ReportReader", "ReportStore"]
