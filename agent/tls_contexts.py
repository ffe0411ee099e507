"""Client TLS contexts, made once per CA bundle and verify mode and shared by every connection.

Making a context costs CPU: ~0.6 ms with a one-certificate CA file, ~29 ms with the system's
store (measured on the 2-core machine), which the SMTP sender paid on every probe and the IMAP
adapter on every connection. A context is safe to share between connections. A CA file replaced
on disk (another inode, mtime or size: a file renamed over it, as deploy tools and Kubernetes
secret volumes do, or rewritten) gets a new context at the next connection; the system store is
read once per process.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["cached_client_context", "load_client_context"]

_Key = tuple[str | None, bool, int, int, int]
_CONTEXTS: dict[_Key, ssl.SSLContext] = {}
_MAX_CONTEXTS = 64  # far above the CA files of any config; only endless CA churn reaches it


def _key(ca_file: Path | None, verify: bool) -> _Key | None:
    """None when the CA file cannot be looked at: loading it then reports why."""
    if ca_file is None:
        return (None, verify, 0, 0, 0)
    try:
        stat = ca_file.stat()  # metadata only, no read: cheap enough for the event loop
    except OSError:
        return None
    return (str(ca_file), verify, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def cached_client_context(ca_file: Path | None, *, verify: bool) -> ssl.SSLContext | None:
    """The context made earlier for this CA bundle as it is now on disk, or None."""
    key = _key(ca_file, verify)
    return None if key is None else _CONTEXTS.get(key)


def load_client_context(ca_file: Path | None, *, verify: bool) -> ssl.SSLContext:
    """Make (blocking: it reads the CA bundle) and keep a client context verifying against
    `ca_file`, or the system's store when None; without `verify`, nothing is checked. Raises
    OSError or ssl.SSLError when the bundle cannot be read."""
    key = _key(ca_file, verify)
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if key is not None:
        if len(_CONTEXTS) >= _MAX_CONTEXTS:
            _CONTEXTS.clear()
        _CONTEXTS[key] = context
    return context
