"""A run's events.jsonl as Server-Sent Events: one message a line, `id` its line number, so a
client that reconnects with Last-Event-ID misses nothing and sees nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from autofit.events import FILE
from autofit.service.db import TERMINAL

POLL_S = 0.3
KEEP_ALIVE_S = 15.0  # proxies close a stream that says nothing for a minute or so


def message(number: int, line: bytes) -> str:
    text = line.decode("utf-8", errors="replace").strip()
    try:
        kind = str(json.loads(text).get("kind", "event"))
    except (ValueError, AttributeError):
        kind = "event"
    return f"id: {number}\nevent: {kind}\ndata: {text}\n\n"


async def stream(run_dir: Path, status: Callable[[], str | None], after: int = 0
                 ) -> AsyncIterator[str]:
    """Every line after line `after`, as it is written, then `event: end` once the run is over
    (a queued run's stream waits for it to start). `status` reads the run's status."""
    offset, number, partial, said_at = 0, 0, b"", time.monotonic()
    path = run_dir / FILE
    while True:
        ended = status()
        chunk = b""
        if path.is_file():
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            number += 1
            if number > after and line.strip():
                said_at = time.monotonic()
                yield message(number, line)
        # the status was read before the file: a run over by then had written every line
        if ended is None or ended in TERMINAL:
            yield f"event: end\ndata: {json.dumps({'status': ended})}\n\n"
            return
        if time.monotonic() - said_at >= KEEP_ALIVE_S:
            said_at = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_S)
