"""Email deliverability monitoring agent: probe routes, read seed mailboxes, export metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deliverability-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
