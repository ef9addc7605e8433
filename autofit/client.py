"""A Python client for `autofit serve` (docs/service.md), so a script never hand-writes HTTP.

    from autofit import Client
    with Client("http://gpu-box:8000", token) as c:
        run = c.wait(c.submit(c.upload("photos/"), minutes=10, max_params="2M").id)
        c.download(run.id, "model.onnx", ".")

It needs only httpx and pydantic (no torch, Ray or FastAPI), so it installs anywhere. Every
failure, an HTTP error or an unreachable server, is a `ServiceError`: one line, as the CLI
prints it.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from autofit.client_models import (
    Dataset,
    Health,
    Label,
    Prediction,
    Run,
    RunCreated,
    RunRequest,
    Token,
)
from autofit.errors import AutofitError, DataError, one_line
from autofit.files import image_files

__all__ = ["Client", "Dataset", "Health", "Label", "Prediction", "Run", "RunCreated",
           "RunRequest", "ServiceError", "Token"]

DEFAULT_URL = "http://127.0.0.1:8000"
ARCHIVES = (".zip", ".tar.gz", ".tgz", ".npz")
STREAM_READ_S = 60.0  # the server sends a keep-alive every 15 s: silence this long is a dead link
Event = dict[str, Any]


class ServiceError(AutofitError):
    """The server answered an error (`status` is its HTTP status) or could not be reached
    (`status` is None); the message is one line with the server's `detail`."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Client:
    """The service's API as methods returning typed models; a `with` block closes it."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("AUTOFIT_SERVER") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("AUTOFIT_TOKEN")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as err:
            raise ServiceError(None, f"{self.url} is not a server URL: {one_line(err)}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> Health:
        return Health.model_validate(self._json("GET", "/healthz"))

    def create_token(self, name: str) -> Token:
        """A new user token (admin only); keep `.token`, it is not shown again."""
        return Token.model_validate(self._json("POST", "/v1/tokens", json={"name": name}))

    def tokens(self) -> list[Token]:
        return [Token.model_validate(t) for t in self._json("GET", "/v1/tokens")["tokens"]]

    def revoke_token(self, token_id: str) -> None:
        self._send("DELETE", f"/v1/tokens/{token_id}")

    def upload(self, path: str | Path, name: str | None = None) -> Dataset:
        """Upload a .zip/.tar.gz/.tgz/.npz file, or a folder packed into a temporary .tar.gz;
        the file streams from disk, so its size does not bound the client's memory."""
        path = Path(path).expanduser()
        if path.is_dir():
            with tempfile.TemporaryDirectory(prefix="autofit-upload-") as tmp:
                archive = pack(path, Path(tmp) / f"{path.name or 'data'}.tar.gz")
                return self._upload_file(archive, name or path.resolve().name)
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        if not path.name.lower().endswith(ARCHIVES):
            raise DataError(f"{path} is not a folder or a .zip, .tar.gz, .tgz or .npz file")
        return self._upload_file(path, name)

    def _upload_file(self, path: Path, name: str | None) -> Dataset:
        data = {"name": name} if name else {}
        with open(path, "rb") as handle:
            files = {"file": (path.name, handle, "application/octet-stream")}
            return Dataset.model_validate(self._json("POST", "/v1/datasets", files=files,
                                                     data=data))

    def datasets(self) -> list[Dataset]:
        return [Dataset.model_validate(d) for d in self._json("GET", "/v1/datasets")["datasets"]]

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._send("DELETE", f"/v1/datasets/{dataset_id}")

    def submit(self, dataset: str | Dataset, minutes: float, max_params: int | str,
               space: str | None = None, budget: str | None = None,
               seed: int | None = None) -> RunCreated:
        """Queue a run on `dataset` (an id or a Dataset); options left None take the server's
        presets."""
        body: dict[str, Any] = {
            "dataset": dataset.id if isinstance(dataset, Dataset) else dataset,
            "minutes": minutes, "max_params": max_params, "space": space, "budget": budget,
            "seed": seed}
        body = {key: value for key, value in body.items() if value is not None}
        return RunCreated.model_validate(self._json("POST", "/v1/runs", json=body))

    def runs(self) -> list[Run]:
        """Newest first."""
        return [Run.model_validate(r) for r in self._json("GET", "/v1/runs")["runs"]]

    def run(self, run_id: str) -> Run:
        return Run.model_validate(self._json("GET", f"/v1/runs/{run_id}"))

    def stop(self, run_id: str) -> Run:
        """A running run ends within seconds with the best model it has; a queued one leaves
        the queue."""
        return Run.model_validate(self._json("POST", f"/v1/runs/{run_id}/stop"))

    def delete(self, run_id: str) -> None:
        self._send("DELETE", f"/v1/runs/{run_id}")

    def events(self, run_id: str, last_event_id: int | str | None = None) -> Iterator[Event]:
        """The run's events as they happen: dicts with `id` (int), `event` (its kind) and
        `data` (parsed JSON), ending with the `end` event. Breaking out closes the stream."""
        for event in self._stream(run_id, last_event_id, STREAM_READ_S):
            if event is not None:
                yield event

    def wait(self, run_id: str, timeout: float | None = None,
             on_event: Callable[[Event], None] | None = None) -> Run:
        """Follow the run's events until it ends and return it as it ended; `on_event` sees
        each event. A dropped stream resumes after the last event seen."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: int | str | None = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                if left is None or left > 0:
                    read_s = STREAM_READ_S if left is None else min(STREAM_READ_S, left + 1.0)
                    for event in self._stream(run_id, last, read_s):
                        if event is not None:
                            last = event["id"] if event["id"] is not None else last
                            if on_event is not None:
                                on_event(event)
                        if deadline is not None and time.monotonic() > deadline:
                            break
            except ServiceError as err:
                if err.status is not None:  # an HTTP error (404, 401): retrying cannot help
                    raise
            run = self.run(run_id)
            if run.ended:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise ServiceError(None, f"run {run_id} is still {run.status} after "
                                         f"{timeout:g}s")
            time.sleep(1.0)

    def _stream(self, run_id: str, last_event_id: int | str | None,
                read_s: float) -> Iterator[Event | None]:
        """The event stream, with None for each keep-alive (so a waiter can watch a clock)."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        timeout = httpx.Timeout(self.timeout, read=read_s)
        with self._open(f"/v1/runs/{run_id}/events", headers=headers,
                        timeout=timeout) as response:
            for event in parse_sse(response.iter_lines()):
                yield event
                if event is not None and event["event"] == "end":
                    return

    def download(self, run_id: str, file: str, dest: str | Path) -> Path:
        """Stream the run's `file` to `dest` (a folder, or the file's path); a failed download
        leaves nothing behind."""
        dest = Path(dest).expanduser()
        target = dest / file if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            with self._open(f"/v1/runs/{run_id}/{file}") as response, \
                    open(partial, "wb") as out:
                for chunk in response.iter_bytes(1 << 16):
                    out.write(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def predict(self, run_id: str, images: str | Path | Sequence[str | Path],
                top_k: int = 1) -> list[Prediction]:
        """Labels for image files (folders stand for the images in them) from the run's
        model, in the order given."""
        try:
            paths = image_files([images] if isinstance(images, (str, Path)) else images)
        except ValueError as err:
            raise DataError(str(err)) from None
        with ExitStack() as stack:
            files = [("files", (p.name, stack.enter_context(open(p, "rb")),
                                "application/octet-stream")) for p in paths]
            answer = self._json("POST", f"/v1/runs/{run_id}/predict", files=files,
                                data={"top_k": str(top_k)})
        return [Prediction.model_validate(p) for p in answer["predictions"]]

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._guard(method, path):
            response = self._http.request(method, path, **kwargs)
        self._raise_for(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(response.status_code, f"{method} {path}: the server at "
                               f"{self.url} answered something other than JSON") from None

    @contextmanager
    def _guard(self, method: str, path: str) -> Iterator[None]:
        """httpx's transport failures (refused, timed out, dropped) as one-line ServiceErrors
        that name the server's URL."""
        try:
            yield
        except httpx.ConnectError as err:
            reason = "connection refused" if "refused" in str(err).lower() else one_line(err)
            raise ServiceError(None, f"cannot reach the autofit server at {self.url} "
                                     f"({reason}); is `autofit serve` running there?") from None
        except httpx.TimeoutException:
            raise ServiceError(None, f"{method} {path}: the autofit server at {self.url} did "
                                     "not answer in time") from None
        except httpx.HTTPError as err:
            raise ServiceError(None, f"{method} {path} to {self.url} failed: "
                                     f"{one_line(err)}") from None

    @contextmanager
    def _open(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed GET whose body is read only as the caller iterates it."""
        with self._guard("GET", path), self._http.stream("GET", path, **kwargs) as response:
            if response.is_error:
                response.read()
                self._raise_for(response)
            yield response

    def _raise_for(self, response: httpx.Response) -> None:
        if not response.is_error:
            return
        request = response.request
        where = f"{request.method} {request.url.path}"
        raise ServiceError(response.status_code, f"{where}: {response.status_code} "
                           f"{response.reason_phrase}: {detail_of(response)}")


def detail_of(response: httpx.Response) -> str:
    """The server's `detail` on one line; for a 422, each field error as `field: message`."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        text = " ".join(response.text.split())
        return text[:200] or "no detail"
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(x) for x in item.get("loc", []) if x not in ("body", "query", "path",
                                                                      "header", "form")]
            field = ".".join(loc) or "request"
            parts.append(f"{field}: {item.get('msg', 'invalid')}")
        return one_line(Exception("; ".join(parts))) or "invalid request"
    return one_line(Exception(str(detail))) if detail is not None else "no detail"


def parse_sse(lines: Iterator[str]) -> Iterator[Event | None]:
    """Server-Sent Events from a stream's lines, None for a comment (a keep-alive): multi-line
    data joined, the data parsed as JSON (left as text when it is not)."""
    event_id: int | str | None = None
    kind, data = "", []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data or kind:
                text = "\n".join(data)
                try:
                    parsed: Any = json.loads(text) if text else None
                except ValueError:
                    parsed = text
                yield {"id": event_id, "event": kind or "message", "data": parsed}
            kind, data = "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id":
            event_id = int(value) if value.isdigit() else value


def pack(folder: Path, archive: Path) -> Path:
    """`folder` as a .tar.gz written file by file (its top folder kept, hidden files left out,
    links followed), so a large dataset never sits in memory."""
    root = folder.resolve()
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for current, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file_name in sorted(n for n in names if not n.startswith(".")):
                path = Path(current) / file_name
                if not path.is_file():
                    continue
                arcname = str(Path(root.name) / path.relative_to(root))
                with open(path, "rb") as handle:
                    info = tar.gettarinfo(arcname=arcname, fileobj=handle)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, handle)
    return archive
