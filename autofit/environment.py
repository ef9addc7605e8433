"""The host process's environment, changed only for a block: a library must not change it for
good. Ray sets variables of its own when it starts (PYTHONBREAKPOINT to its debugger among
them) and torch caches a path there; all are undone when the block ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def scoped_environment(defaults: dict[str, str] | None = None) -> Iterator[None]:
    """Set `defaults` where the user has not set them, run the block, then put every variable
    back as it was before it (added ones removed, changed ones restored)."""
    before = dict(os.environ)
    for name, value in (defaults or {}).items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


def ray_node() -> str:
    """The Ray node this process runs on, as the leaderboard shows it: its IP and the start of
    its node id (nodes on one host share an IP)."""
    import ray

    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
