"""How a refused request body ends: a 413 is answered before the body is read, and a connection
closed on unread bytes is reset by TCP, which can destroy the answer before the client reads it
(a CI run lost a 2 MiB upload's 413 that way). So a body up to DRAIN_BYTES (more than a
prediction request may hold) is left for uvicorn to read and drop after the answer; a longer
one, or one of unknown length (chunked), is not read: the connection closes, and such a client
may see a reset instead of the answer."""

from __future__ import annotations

from collections.abc import Mapping

DRAIN_BYTES = 128 << 20
CLOSE = {"Connection": "close"}


def refusal_headers(request_headers: Mapping[str, str]) -> dict[str, str] | None:
    """The answer's headers for a refused body: None (kept alive, the rest read and dropped)
    where its announced length is at most DRAIN_BYTES, else `Connection: close`."""
    length = request_headers.get("content-length", "")
    return None if length.isdigit() and int(length) <= DRAIN_BYTES else dict(CLOSE)
