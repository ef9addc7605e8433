"""`autofit serve`: the state folder, the admin token, Ray, the queue and uvicorn, in order;
on the way out the runs are interrupted (each resumes at the next start)."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from autofit.errors import UsageError
from autofit.presets import home
from autofit.search.cluster import check_address
from autofit.service import db as database
from autofit.service.app import Service, create_app, digest, new_token
from autofit.service.scheduler import Scheduler
from autofit.service.uploads import Limits

TOKEN_FILE = "admin.token"
log = logging.getLogger("autofit.serve")


def default_root() -> Path:
    return home() / "serve"


def prepare_root(root: Path) -> database.Database:
    """The state folder and its database; refuses a root that cannot be written."""
    try:
        for sub in ("", "datasets", "runs", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return database.Database(root / database.FILE)
    except (OSError, RuntimeError) as err:
        raise UsageError(f"--root {root}: {getattr(err, 'strerror', None) or err}") from None


def admin_token(db: database.Database, root: Path) -> Path:
    """ROOT/admin.token (mode 0600), written on first start, or again if it was removed."""
    path = root / TOKEN_FILE
    if path.is_file() and db.has_admin():
        return path
    token = new_token()
    db.add_token("admin", digest(token), admin=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path


def start_ray(address: str | None) -> str:
    """The address runs connect to: the cluster's, or a local Ray's started here (it ends
    with this process)."""
    import ray

    from autofit.search.cluster import RAY_ENVIRONMENT

    os.environ.update(RAY_ENVIRONMENT)
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=False)
    return address or str(ray.get_runtime_context().gcs_address)


def upload_limits(max_upload: str) -> Limits:
    """--max-upload as bytes (2G, 500M, 10k); an archive may expand to 4 times that."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)[bB]?\s*", max_upload)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--max-upload must be a size like 2G, 500M or 100k, not "
                         f"{max_upload!r}")
    size = int(float(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " "))
    return Limits(upload_bytes=size, extracted_bytes=4 * size)


def serve(host: str = "127.0.0.1", port: int = 8000, root: Path | None = None,
          ray_address: str | None = None, storage: str | None = None,
          max_upload: str = "2G") -> None:
    import uvicorn

    check_address(ray_address)
    limits = upload_limits(max_upload)
    root = (root or default_root()).expanduser().resolve()
    db = prepare_root(root)
    token_path = admin_token(db, root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    log.info("state in %s; the admin token is in %s", root, token_path)
    address = start_ray(ray_address)
    log.info("runs go to Ray at %s", address)
    scheduler = Scheduler(db, root, address, storage)
    service = Service(db=db, root=root, scheduler=scheduler, limits=limits)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        scheduler.start()
        yield
        log.info("stopping: interrupting %d run(s), to resume at the next start",
                 len(scheduler.procs))
        scheduler.close()

    app = create_app(service)
    app.router.lifespan_context = lifespan
    log.info("serving http://%s:%d (API docs at /docs)", host, port)
    # uvicorn shuts down on SIGTERM, then re-raises it to the handler before its own: Ray's
    # driver handler would exit with status 15, so a requested shutdown exits 0 instead
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        db.close()
