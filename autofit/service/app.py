"""The HTTP API (v1, docs/service.md) on FastAPI: tokens, datasets, runs, their events, files
and predictions. A token sees only its own datasets and runs; anything else is a 404, so ids
of other people's work cannot be probed."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse

from autofit import __version__, stopping
from autofit.records import BestSoFarRecord, JournalState, Summary
from autofit.service import events
from autofit.service.db import Database, new_id
from autofit.service.refusals import refusal_headers
from autofit.service.scheduler import Scheduler
from autofit.service.schemas import (
    DatasetList,
    DatasetView,
    Health,
    RunCreated,
    RunList,
    RunRequest,
    RunView,
    TokenCreated,
    TokenList,
    TokenRequest,
    TokenView,
)
from autofit.service.uploads import Limits, UploadError, ingest

FILES = {"model.onnx": "application/octet-stream", "best_so_far.onnx": "application/octet-stream",
         "model.int8.onnx": "application/octet-stream",
         "report.html": "text/html", "summary.json": "application/json",
         "leaderboard.csv": "text/csv", "run.log": "text/plain", "events.jsonl":
         "application/x-ndjson"}
PREDICT_BYTES = 64 * 2**20  # images to classify in one request
PREDICT_FILES = 256
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": ".zip, .tar.gz or .tgz of an image folder or label CSV, or .npz"},
        "name": {"type": "string"}}}}}}}
PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "top_k": {"type": "integer", "minimum": 1}}}}}}}


def digest(token: str) -> str:
    """What the database keeps of a token: a leaked database grants nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "af_" + secrets.token_urlsafe(32)


@dataclass
class Service:
    db: Database
    root: Path
    scheduler: Scheduler
    limits: Limits = field(default_factory=Limits)
    models: dict[str, Any] = field(default_factory=dict)  # run id -> loaded predict.Model


def caller(request: Request, authorization: Annotated[str | None, Header()] = None
           ) -> dict[str, Any]:
    """The token's row; 401 for none, a revoked or an unknown one."""
    scheme, _, token = (authorization or "").partition(" ")
    found = request.app.state.service.db.token_by_hash(digest(token.strip())) if \
        scheme.lower() == "bearer" and token.strip() else None
    if found is None:
        raise HTTPException(401, "a valid token is needed: Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    return dict(found)


def admin(who: Annotated[dict[str, Any], Depends(caller)]) -> dict[str, Any]:
    if not who["admin"]:
        raise HTTPException(403, "only the admin token manages tokens")
    return who


Caller = Annotated[dict[str, Any], Depends(caller)]
Admin = Annotated[dict[str, Any], Depends(admin)]


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="autofit", version=__version__,
                  description="Time-budgeted AutoML for image classification: upload a dataset, "
                              "queue a run with a budget, follow it, fetch the model.")
    app.state.service = service
    db, root = service.db, service.root

    def owned_run(run_id: str, who: dict[str, Any]) -> dict[str, Any]:
        run = db.run(run_id, who["id"])
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        return run

    def view(run: dict[str, Any]) -> RunView:
        run_dir = service.scheduler.run_dir(run["id"])
        journal = JournalState.read(run_dir / "journal.json")
        summary = Summary.read(run_dir / "summary.json")
        best = BestSoFarRecord.read(run_dir / "best_so_far.json")
        used = summary.elapsed_s if summary is not None else \
            round(sum(journal.spent.values()), 3) if journal is not None else None
        return RunView(
            **{k: run[k] for k in ("id", "dataset", "status", "request", "created_at",
                                   "started_at", "ended_at", "queued_s", "error")},
            position=db.position(run), stop_requested=bool(run["stop_requested"]),
            budget_s=journal.args.budget.seconds if journal is not None else None,
            used_s=used, phase=journal.phase if journal is not None else None,
            best_so_far=best, summary=summary,
            test_accuracy=None if summary is None else summary.test_accuracy,
            files=[name for name in FILES if (run_dir / name).is_file()])

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        counts = db.counts()
        return Health(queued=counts.get("queued", 0), running=counts.get("running", 0))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("autofit.service").joinpath("page.html")
                            .read_text(encoding="utf-8"))

    @app.post("/v1/tokens", status_code=201, response_model=TokenCreated)
    def create_token(body: TokenRequest, who: Admin) -> TokenCreated:
        token = new_token()
        row = db.add_token(body.name, digest(token))
        return TokenCreated(id=row["id"], name=body.name, token=token,
                            created_at=row["created_at"])

    @app.get("/v1/tokens", response_model=TokenList)
    def list_tokens(who: Admin) -> TokenList:
        return TokenList(tokens=[TokenView(id=t["id"], name=t["name"], admin=bool(t["admin"]),
                                           created_at=t["created_at"],
                                           revoked=t["revoked_at"] is not None)
                                 for t in db.tokens()])

    @app.delete("/v1/tokens/{token_id}", status_code=204)
    def revoke_token(token_id: str, who: Admin) -> Response:
        if not db.revoke_token(token_id):
            raise HTTPException(404, f"no token {token_id}")
        return Response(status_code=204)

    @app.post("/v1/datasets", status_code=201, response_model=DatasetView,
              openapi_extra=UPLOAD_BODY)
    async def upload(request: Request, who: Caller) -> DatasetView:
        dataset_id = new_id()
        folder = root / "datasets" / dataset_id
        folder.mkdir(parents=True)
        try:
            got = await ingest(request, folder, service.limits)
        except UploadError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(err.status, err.message, headers=refusal_headers(
                request.headers) if err.status == 413 else None) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        row = db.add_dataset({"id": dataset_id, "owner": who["id"], "name": got.name,
                              "format": got.format, "data": got.data, "classes": got.classes,
                              "images": got.images, "test_images": got.test_images,
                              "bytes": got.bytes})
        return DatasetView(**row)

    @app.get("/v1/datasets", response_model=DatasetList)
    def list_datasets(who: Caller) -> DatasetList:
        return DatasetList(datasets=[DatasetView(**d) for d in db.datasets(who["id"])])

    @app.get("/v1/datasets/{dataset_id}", response_model=DatasetView)
    def get_dataset(dataset_id: str, who: Caller) -> DatasetView:
        found = db.dataset(who["id"], dataset_id)
        if found is None:
            raise HTTPException(404, f"no dataset {dataset_id}")
        return DatasetView(**found)

    @app.delete("/v1/datasets/{dataset_id}", status_code=204)
    def delete_dataset(dataset_id: str, who: Caller) -> Response:
        outcome = db.delete_dataset(who["id"], dataset_id)
        if outcome == "missing":
            raise HTTPException(404, f"no dataset {dataset_id}")
        if outcome == "in use":
            raise HTTPException(409, f"dataset {dataset_id} is used by a queued or running run")
        shutil.rmtree(root / "datasets" / dataset_id, ignore_errors=True)
        return Response(status_code=204)

    @app.post("/v1/runs", status_code=202, response_model=RunCreated)
    def submit(body: RunRequest, who: Caller) -> RunCreated:
        if db.dataset(who["id"], body.dataset) is None:
            raise HTTPException(404, f"no dataset {body.dataset}")
        run = db.add_run(who["id"], body.dataset, body.model_dump())
        return RunCreated(id=run["id"], status="queued", position=db.position(run))

    @app.get("/v1/runs", response_model=RunList)
    def list_runs(who: Caller) -> RunList:
        return RunList(runs=[view(r) for r in db.runs(who["id"])])

    @app.get("/v1/runs/{run_id}", response_model=RunView)
    def get_run(run_id: str, who: Caller) -> RunView:
        return view(owned_run(run_id, who))

    @app.get("/v1/runs/{run_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    def run_events(run_id: str, who: Caller,
                   last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        owned_run(run_id, who)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

        def status() -> str | None:
            found = db.run(run_id)
            return None if found is None else str(found["status"])

        return StreamingResponse(events.stream(service.scheduler.run_dir(run_id), status, after),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    @app.get("/v1/runs/{run_id}/{name}")
    def run_file(run_id: str, name: str, who: Caller) -> FileResponse:
        owned_run(run_id, who)
        path = service.scheduler.run_dir(run_id) / name
        if name not in FILES:
            raise HTTPException(404, f"no file {name!r} (files: {', '.join(FILES)})")
        if not path.is_file():
            raise HTTPException(404, f"run {run_id} has no {name} yet")
        return FileResponse(path, media_type=FILES[name],
                            filename=None if name == "report.html" else f"{run_id}-{name}")

    @app.post("/v1/runs/{run_id}/stop", status_code=202, response_model=RunView)
    def stop(run_id: str, who: Caller) -> RunView:
        """A queued run leaves the queue; a running one is asked to stop and keep its best
        model (autofit/stopping.py): it ends within seconds, and the scheduler records how."""
        run = owned_run(run_id, who)
        if run["status"] == "queued" and db.update_run(
                run_id, when="queued", status="stopped", stop_requested=1, ended_at=time.time(),
                error="stopped before it started"):
            return view(owned_run(run_id, who))
        run = owned_run(run_id, who)  # it may have started in the meantime
        if run["status"] == "running":
            db.update_run(run_id, stop_requested=1)
            run_dir = service.scheduler.run_dir(run_id)
            run_dir.mkdir(parents=True, exist_ok=True)
            stopping.request(run_dir, by="autofit serve")
        return view(owned_run(run_id, who))

    @app.delete("/v1/runs/{run_id}", status_code=204)
    def delete_run(run_id: str, who: Caller) -> Response:
        run = owned_run(run_id, who)
        if run["status"] == "running":
            raise HTTPException(409, f"run {run_id} is running; stop it first")
        if run["status"] == "queued" and not db.update_run(run_id, when="queued",
                                                           status="stopped"):
            raise HTTPException(409, f"run {run_id} has just started; stop it first")
        db.delete_run(run_id)
        service.models.pop(run_id, None)
        shutil.rmtree(service.scheduler.run_dir(run_id), ignore_errors=True)
        service.scheduler.console(run_id).unlink(missing_ok=True)
        return Response(status_code=204)

    @app.post("/v1/runs/{run_id}/predict", openapi_extra=PREDICT_BODY)
    async def predict(run_id: str, request: Request, who: Caller) -> dict[str, Any]:
        owned_run(run_id, who)
        model_path = service.scheduler.run_dir(run_id) / "model.onnx"
        if not model_path.is_file():
            raise HTTPException(409, f"run {run_id} has no model yet")
        if int(request.headers.get("content-length") or 0) > PREDICT_BYTES:
            raise HTTPException(413, f"at most {PREDICT_BYTES // 2**20} MiB of images per "
                                     f"request", headers=refusal_headers(request.headers))
        form = await request.form(max_files=PREDICT_FILES, max_fields=8)
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        if not files:
            raise HTTPException(400, "no images: send them as multipart field 'files'")
        top_k = str(form.get("top_k") or "1")
        if not top_k.isdigit() or int(top_k) < 1:
            raise HTTPException(422, "top_k must be a whole number of at least 1")
        with tempfile.TemporaryDirectory(prefix="autofit-predict-") as tmp:
            paths = []
            for number, upload in enumerate(files):
                # the client's name is shown back, never used as a path
                path = Path(tmp) / f"{number:04d}{Path(upload.filename or '').suffix[:8]}"
                path.write_bytes(await upload.read())
                paths.append((path, upload.filename or path.name))
            model = service.models.get(run_id)
            if model is None or getattr(model, "path", None) != model_path:
                from autofit.deliver.predict import load

                model = service.models[run_id] = await asyncio.to_thread(load, model_path)
            found = await asyncio.to_thread(model.predict, [p for p, _ in paths], int(top_k))
        names = {str(p): shown for p, shown in paths}
        return {"predictions": [{**p.as_dict(), "image": names.get(p.image, p.image)}
                                for p in found]}

    return app
