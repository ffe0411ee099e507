"""Does a port speak TLS? Used to turn a TLS-mode mismatch into a fast, clear `tls` error.

A plain-text client on an implicit-TLS port (SMTPS 465, IMAPS 993) waits for a greeting the
server will never send: the server waits for a ClientHello. Both adapters, after a short silence,
ask a second connection this question instead of hanging until their timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = ["answers_tls"]


async def answers_tls(host: str, port: int, *, server_hostname: str) -> bool:
    """Whether host:port answers a TLS ClientHello with a TLS record (handshake or alert).

    Callers bound it with `asyncio.timeout`: a port that says nothing never answers.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA bundle to load: nothing is verified
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()  # writes the ClientHello into `outgoing`
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(outgoing.read())
        header = await reader.readexactly(2)
    except (OSError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
    # A TLS record starts with content type 22 (handshake) or 21 (alert), then major version 3.
    return header[0] in (21, 22) and header[1] == 3
