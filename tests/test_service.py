"""`autofit serve` against a real server on loopback with real runs on its local Ray: tokens,
ownership, validation, uploads, the queue, events, files, predictions, stop and delete.

One server and few runs are shared (each run is about a minute on 2 cores).
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import service_server as ss
from PIL import Image

RUN_MINUTES = 0.8  # the least that searches and trains on the digits with Ray's start-up


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ss.Server]:
    with ss.running(tmp_path_factory.mktemp("serve") / "root", "--max-upload", "1M") as server:
        yield server


def _token(server: ss.Server, name: str) -> str:
    with server.client() as admin:
        answer = admin.post("/v1/tokens", json={"name": name})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


@pytest.fixture(scope="module")
def alice(served: ss.Server) -> str:
    return _token(served, "alice")


@pytest.fixture(scope="module")
def bob(served: ss.Server) -> str:
    return _token(served, "bob")


@pytest.fixture(scope="module")
def digits(served: ss.Server, alice: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    npz = ss.digits_npz(tmp_path_factory.mktemp("data") / "digits.npz")
    with served.client(alice) as client, open(npz, "rb") as handle:
        answer = client.post("/v1/datasets", files={"file": ("digits.npz", handle)})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["format"] == "npz" and body["classes"] == [str(i) for i in range(10)]
    assert body["images"] == 1400 and body["test_images"] == 397
    return str(body["id"])


@pytest.fixture(scope="module")
def finished(served: ss.Server, alice: str, digits: str) -> dict[str, object]:
    with served.client(alice) as client:
        answer = client.post("/v1/runs", json={"dataset": digits, "minutes": RUN_MINUTES,
                                               "max_params": "300k", "seed": 1})
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["id"]
    return ss.wait_for(served, run_id, ("finished", "failed", "stopped"), 300, alice)


def test_every_endpoint_but_healthz_needs_a_valid_token(served: ss.Server, alice: str):
    assert (served.root / "admin.token").stat().st_mode & 0o777 == 0o600
    assert "admin.token" in served.log.read_text()  # the server said where it is
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    spec = httpx.get(f"{served.url}/openapi.json").json()  # the API's own description
    assert {"/v1/datasets", "/v1/runs", "/v1/runs/{run_id}/events",
            "/v1/runs/{run_id}/predict"} <= set(spec["paths"])
    assert httpx.get(f"{served.url}/docs").status_code == 200
    assert "<html" in httpx.get(f"{served.url}/").text.lower()  # the page asks for a token
    for headers in ({}, {"Authorization": "Bearer af_wrong"}, {"Authorization": alice}):
        for method, path in (("GET", "/v1/runs"), ("GET", "/v1/datasets"),
                             ("POST", "/v1/runs"), ("GET", "/v1/runs/x/model.onnx"),
                             ("GET", "/v1/tokens")):
            answer = httpx.request(method, served.url + path, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"


def test_only_the_admin_manages_tokens_and_a_revoked_token_is_refused(served: ss.Server,
                                                                      alice: str):
    with served.client(alice) as client:
        assert client.post("/v1/tokens", json={"name": "eve"}).status_code == 403
    carol = _token(served, "carol")
    with served.client() as admin:
        listed = {t["name"]: t for t in admin.get("/v1/tokens").json()["tokens"]}
        assert listed["admin"]["admin"] and not listed["carol"]["revoked"]
        assert "token" not in listed["carol"] and "hash" not in listed["carol"]
        with served.client(carol) as client:
            assert client.get("/v1/runs").status_code == 200
        assert admin.delete(f"/v1/tokens/{listed['carol']['id']}").status_code == 204
        with served.client(carol) as client:
            assert client.get("/v1/runs").status_code == 401


def test_budgets_out_of_range_and_unknown_presets_are_422_naming_the_field(
        served: ss.Server, alice: str, digits: str):
    cases = {"minutes": {"minutes": 0}, "max_params": {"max_params": "lots"},
             "space": {"space": "../../etc/passwd"}, "budget": {"budget": "nope"},
             "seed": {"seed": -1}}
    with served.client(alice) as client:
        for field, bad in cases.items():
            answer = client.post("/v1/runs", json={"dataset": digits, **bad})
            assert answer.status_code == 422, (field, answer.text)
            assert [e["loc"] for e in answer.json()["detail"]] == [["body", field]]
        assert client.post("/v1/runs", json={"dataset": digits, "minutes": 1,
                                             "surprise": 1}).status_code == 422


def test_a_hostile_archive_is_400_and_writes_nothing_outside(served: ss.Server, alice: str,
                                                             tmp_path: Path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name in ("../escaped.txt", "data/../../escaped2.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    before = sorted(p.relative_to(served.root) for p in served.root.rglob("*"))
    with served.client(alice) as client:
        answer = client.post("/v1/datasets", files={"file": ("evil.tar.gz",
                                                              archive.getvalue())})
        assert answer.status_code == 400, answer.text
        assert "\n" not in answer.json()["detail"] and str(served.root) not in answer.text
        assert client.get("/v1/datasets").json()["datasets"] == [] or all(
            d["name"] != "evil" for d in client.get("/v1/datasets").json()["datasets"])
    assert not list(served.root.parent.rglob("escaped*"))
    after = sorted(p.relative_to(served.root) for p in served.root.rglob("*"))
    assert [p for p in after if p not in before and p.parts[0] == "datasets"] == []


def test_an_upload_over_the_limit_is_413(served: ss.Server, alice: str):
    with served.client(alice) as client:
        answer = client.post("/v1/datasets", files={"file": ("big.npz", b"\0" * (2 * 2**20))})
    assert answer.status_code == 413, answer.text
    assert not any((served.root / "datasets").rglob("*.npz*")) or all(
        p.stat().st_size < 2 * 2**20 for p in (served.root / "datasets").rglob("*"))


def test_someone_elses_dataset_and_run_are_404(served: ss.Server, bob: str, digits: str,
                                               finished: dict[str, object]):
    run_id = finished["id"]
    with served.client(bob) as client:
        assert client.get("/v1/runs").json()["runs"] == []
        assert client.get("/v1/datasets").json()["datasets"] == []
        for method, path in (("GET", f"/v1/runs/{run_id}"),
                             ("GET", f"/v1/runs/{run_id}/model.onnx"),
                             ("GET", f"/v1/runs/{run_id}/events"),
                             ("POST", f"/v1/runs/{run_id}/stop"),
                             ("DELETE", f"/v1/runs/{run_id}"),
                             ("GET", f"/v1/datasets/{digits}"),
                             ("DELETE", f"/v1/datasets/{digits}")):
            answer = client.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
        answer = client.post("/v1/runs", json={"dataset": digits, "minutes": 1})
        assert answer.status_code == 404
        answer = client.post(f"/v1/runs/{run_id}/predict", files={"files": ("a.png", b"x")})
        assert answer.status_code == 404


def test_a_run_finishes_with_its_events_files_and_predictions(
        served: ss.Server, alice: str, finished: dict[str, object], tmp_path: Path):
    assert finished["status"] == "finished", finished
    summary = finished["summary"]
    assert isinstance(summary, dict) and summary["status"] == "finished"
    assert finished["test_accuracy"] is not None and float(finished["test_accuracy"]) > 0.8
    assert float(finished["used_s"]) <= RUN_MINUTES * 60 + 1, finished
    assert {"model.onnx", "report.html", "summary.json", "leaderboard.csv"} <= set(
        finished["files"])
    run_id = finished["id"]
    with served.client(alice) as client:
        model = client.get(f"/v1/runs/{run_id}/model.onnx")
        assert model.status_code == 200
        onnx.checker.check_model(onnx.load_from_string(model.content))
        assert client.get(f"/v1/runs/{run_id}/nope.txt").status_code == 404
        assert client.get(f"/v1/runs/{run_id}/..%2Fjournal.json").status_code == 404

        events = _events(client, run_id)
        assert [int(e["id"]) for e in events[:-1]] == list(range(1, len(events)))
        assert events[0]["event"] == "start" and events[-1]["event"] == "end"
        assert json.loads(events[-1]["data"]) == {"status": "finished"}
        kinds = [e["event"] for e in events]
        assert "test" in kinds and "done" in kinds
        later = _events(client, run_id, last_event_id=5)
        assert later[0]["id"] == "6" and later[:-1] == events[5:-1]

        from sklearn.datasets import load_digits

        images = load_digits().images[1400:1404]
        files = []
        for number, image in enumerate(images):
            png = io.BytesIO()
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(png, "PNG")
            files.append(("files", (f"digit{number}.png", png.getvalue(), "image/png")))
        files.append(("files", ("broken.png", b"not an image", "image/png")))
        answer = client.post(f"/v1/runs/{run_id}/predict", files=files, data={"top_k": "2"})
        assert answer.status_code == 200, answer.text
        found = answer.json()["predictions"]
        assert [p["image"] for p in found] == [f"digit{i}.png" for i in range(4)] + [
            "broken.png"]
        assert all(len(p["top"]) == 2 for p in found[:4]) and "error" in found[4]
        labels = [p["top"][0]["label"] for p in found[:4]]
        truth = [str(t) for t in load_digits().target[1400:1404]]
        assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 3, (labels, truth)


def test_a_stopped_run_keeps_its_best_model_and_the_queue_moves_on(
        served: ss.Server, alice: str, digits: str):
    with served.client(alice) as client:
        first = client.post("/v1/runs", json={"dataset": digits, "minutes": 2}).json()
        second = client.post("/v1/runs", json={"dataset": digits, "minutes": RUN_MINUTES,
                                                "max_params": "200k"}).json()
        assert second["status"] == "queued" and second["position"] == first["position"] + 1
        run = ss.wait_for(served, first["id"], ("running",), 120, alice)
        deadline = time.time() + 90
        while "best_so_far.onnx" not in run["files"] and time.time() < deadline:
            time.sleep(0.5)
            run = client.get(f"/v1/runs/{first['id']}").json()
        assert "best_so_far.onnx" in run["files"], run
        assert client.get(f"/v1/runs/{second['id']}").json()["position"] == 1
        assert client.delete(f"/v1/runs/{first['id']}").status_code == 409  # running

        load = _load(served, alice, first["id"])  # the server answers while a run trains
        asked = time.time()
        assert client.post(f"/v1/runs/{first['id']}/stop").status_code == 202
        stopped = ss.wait_for(served, first["id"], ("stopped", "failed", "finished"), 60, alice)
        took = time.time() - asked
        load.join()
        assert stopped["status"] == "stopped", stopped
        assert took < 30, took
        assert stopped["test_accuracy"] is not None and stopped["error"] is None
        assert {"model.onnx", "report.html", "summary.json"} <= set(stopped["files"])
        assert stopped["summary"]["stopped_phase"] in ("search", "refit")
        assert float(stopped["used_s"]) < 120
        assert load.failures == [] and load.count > 50, load.failures[:3]

        done = ss.wait_for(served, second["id"], ("finished", "failed", "stopped"), 200, alice)
        assert done["status"] == "finished", done
        # its budget started when it left the queue: it waited, yet used no more than it had
        assert float(done["queued_s"]) >= 10 and float(done["used_s"]) <= RUN_MINUTES * 60 + 1

        third = client.post("/v1/runs", json={"dataset": digits, "minutes": 5}).json()
        fourth = client.post("/v1/runs", json={"dataset": digits, "minutes": 5}).json()
        ss.wait_for(served, third["id"], ("running",), 60, alice)
        assert client.delete(f"/v1/runs/{fourth['id']}").status_code == 204  # queued
        assert client.get(f"/v1/runs/{fourth['id']}").status_code == 404
        client.post(f"/v1/runs/{third['id']}/stop")
        ss.wait_for(served, third["id"], ("stopped", "failed", "finished"), 90, alice)
        assert client.delete(f"/v1/runs/{third['id']}").status_code == 204
        assert not (served.root / "runs" / third["id"]).exists()


class _Load(threading.Thread):
    """Health and status calls from 4 threads until told to stop: counts, failures, latency."""

    def __init__(self, server: ss.Server, token: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.server, self.token, self.run_id = server, token, run_id
        self.count, self.failures, self.latencies = 0, [], []
        self.done = threading.Event()

    def run(self) -> None:
        workers = [threading.Thread(target=self._work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _work(self) -> None:
        with self.server.client(self.token, timeout=30) as client:
            for number in range(40):
                path = "/healthz" if number % 2 else f"/v1/runs/{self.run_id}"
                tick = time.perf_counter()
                try:
                    answer = client.get(path)
                    ok = answer.status_code == 200
                except httpx.HTTPError as err:
                    ok, answer = False, err
                self.latencies.append(time.perf_counter() - tick)
                self.count += 1
                if not ok:
                    self.failures.append(str(answer))


def _load(server: ss.Server, token: str, run_id: str) -> _Load:
    load = _Load(server, token, run_id)
    load.start()
    return load


def _events(client: httpx.Client, run_id: str, last_event_id: int | None = None
            ) -> list[dict[str, str]]:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    found: list[dict[str, str]] = []
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        for line in answer.iter_lines():
            if not line:
                if current:
                    found.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return found
