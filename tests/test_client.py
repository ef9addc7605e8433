"""`autofit.Client` and the `autofit submit/status/fetch` verbs against a real `autofit serve`
on loopback, with real runs on its local Ray.

Runs are slow on 2 cores, so one server and two runs are shared: one submitted through the
Python client (on a .npz), one through `autofit submit --wait` (on a folder of PNGs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import service_server as ss
from PIL import Image

import autofit
from autofit.client import Client, Dataset, Run, ServiceError, parse_sse

RUN_MINUTES = 0.8  # 0.3 fails here: "leaves 8 s after setup" on a loaded 2-core machine
MAX_PARAMS = "300k"
FOLDER_CLASSES = ("0", "1", "7")
CLI = [sys.executable, "-m", "autofit"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ss.Server]:
    with ss.running(tmp_path_factory.mktemp("serve") / "root") as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits as a .npz, and three of its classes as DIR/<class>/*.png."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("data")
    npz = ss.digits_npz(root / "digits.npz")
    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    folder = root / "few digits"  # a space: names travel as they are
    for label in FOLDER_CLASSES:
        (folder / label).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == int(label))[:80]):
            Image.fromarray(images[index]).save(folder / label / f"{i:03d}.png")
    (folder / ".DS_Store").write_bytes(b"junk a Mac leaves")  # hidden files are left out
    return {"npz": npz, "folder": folder}


@pytest.fixture(scope="module")
def admin(served: ss.Server) -> Iterator[Client]:
    with Client(served.url, served.token, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def uploaded(admin: Client, data: dict[str, Path]) -> dict[str, Dataset]:
    return {"npz": admin.upload(data["npz"]), "folder": admin.upload(data["folder"])}


@pytest.fixture(scope="module")
def client_run(admin: Client, uploaded: dict[str, Dataset]) -> dict[str, Any]:
    """A run submitted and followed through the client; a second run, queued behind it, is
    stopped and deleted while it waits."""
    created = admin.submit(uploaded["npz"], minutes=RUN_MINUTES, max_params=MAX_PARAMS, seed=1)
    queued = admin.submit(uploaded["folder"].id, minutes=RUN_MINUTES, max_params=MAX_PARAMS)
    listed = admin.runs()
    stopped = admin.stop(queued.id)
    admin.delete(queued.id)
    seen: list[dict[str, Any]] = []
    final = admin.wait(created.id, timeout=600, on_event=seen.append)
    return {"created": created, "queued": queued, "listed": listed, "stopped": stopped,
            "events": seen, "run": final}


def autofit_cli(*args: str, token: str | None, server: str,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOFIT_TOKEN", "AUTOFIT_SERVER")}
    env["AUTOFIT_SERVER"] = server
    if token is not None:
        env["AUTOFIT_TOKEN"] = token
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(served: ss.Server, data: dict[str, Path], client_run: dict[str, Any]
            ) -> tuple[subprocess.CompletedProcess[str], str]:
    """`autofit submit FOLDER --wait` (after the client's run, so the two never queue)."""
    proc = autofit_cli("submit", str(data["folder"]), "--minutes", str(RUN_MINUTES),
                       "--max-params", MAX_PARAMS, "--wait", token=served.token,
                       server=served.url)
    assert proc.returncode == 0, proc.stderr
    return proc, proc.stdout.splitlines()[0]


def test_server_sent_events_parse_as_the_server_writes_them():
    lines = [": keep-alive", "", "id: 1", "event: start", 'data: {"kind": "start"}', "",
             "id: 2", "event: note", "data: not json", "data: line two", "",
             "event: end", 'data: {"status": "finished"}', ""]
    events = [e for e in parse_sse(iter(lines)) if e is not None]
    assert events == [{"id": 1, "event": "start", "data": {"kind": "start"}},
                      {"id": 2, "event": "note", "data": "not json\nline two"},
                      {"id": 2, "event": "end", "data": {"status": "finished"}}]


def test_health_tokens_and_ownership(served: ss.Server, admin: Client,
                                     uploaded: dict[str, Dataset]):
    health = admin.health()
    assert health.status == "ok" and health.queued >= 0 and health.running >= 0
    alice = admin.create_token("alice")
    assert alice.token and alice.name == "alice"
    listed = {t.id: t for t in admin.tokens()}
    assert not listed[alice.id].admin and not listed[alice.id].revoked
    assert any(t.admin for t in listed.values())
    with Client(served.url, alice.token) as as_alice:
        assert as_alice.datasets() == []  # the admin's datasets are not hers
        with pytest.raises(ServiceError) as caught:
            as_alice.tokens()
        assert caught.value.status == 403
        with pytest.raises(ServiceError) as caught:
            as_alice.submit(uploaded["npz"].id, minutes=1, max_params="1M")
        assert caught.value.status == 404 and uploaded["npz"].id in str(caught.value)
        admin.revoke_token(alice.id)
        with pytest.raises(ServiceError) as caught:
            as_alice.runs()
        assert caught.value.status == 401 and "\n" not in str(caught.value)
    assert next(t for t in admin.tokens() if t.id == alice.id).revoked


def test_uploads_of_a_folder_and_an_npz(admin: Client, uploaded: dict[str, Dataset],
                                        data: dict[str, Path]):
    npz, folder = uploaded["npz"], uploaded["folder"]
    assert (npz.format, npz.name, npz.images, npz.test_images) == ("npz", "digits", 1400, 397)
    assert npz.classes == [str(i) for i in range(10)]
    assert (folder.format, folder.name, folder.classes) == ("folder", "few digits",
                                                            list(FOLDER_CLASSES))
    assert folder.images == 240 and folder.test_images is None
    assert {d.id for d in admin.datasets()} >= {npz.id, folder.id}
    assert admin.dataset(folder.id) == folder
    named = admin.upload(data["npz"], name="again")
    assert named.name == "again" and named.id not in (npz.id, folder.id)
    admin.delete_dataset(named.id)
    assert named.id not in {d.id for d in admin.datasets()}


def test_bad_uploads_and_requests_are_one_line_errors(admin: Client, tmp_path: Path,
                                                      uploaded: dict[str, Dataset]):
    fake = tmp_path / "photos.zip"
    fake.write_bytes(b"this is not a zip file")
    with pytest.raises(ServiceError) as caught:
        admin.upload(fake)
    assert caught.value.status == 400 and "photos.zip" in str(caught.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(autofit.errors.DataError, match="not a folder or a .zip"):
        admin.upload(text)
    with pytest.raises(autofit.errors.DataError, match="does not exist"):
        admin.upload(tmp_path / "missing")
    with pytest.raises(ServiceError) as caught:
        admin.submit(uploaded["npz"].id, minutes=1, max_params="lots")
    assert caught.value.status == 422 and "max_params:" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ServiceError) as caught:
        admin.submit(uploaded["npz"].id, minutes=1, max_params="1M", space="nonesuch")
    assert caught.value.status == 422 and "space:" in str(caught.value)
    with pytest.raises(ServiceError) as caught:
        admin.run("nonesuch")
    assert caught.value.status == 404 and "nonesuch" in str(caught.value)


def test_an_unreachable_server_is_one_line_naming_it():
    url = f"http://127.0.0.1:{ss.free_port()}"
    with Client(url, "af_x", timeout=5) as client, pytest.raises(ServiceError) as caught:
        client.health()
    message = str(caught.value)
    assert caught.value.status is None and url in message and "refused" in message
    assert "\n" not in message


def test_a_queued_run_is_stopped_and_deleted(admin: Client, client_run: dict[str, Any]):
    created, queued = client_run["created"], client_run["queued"]
    assert created.status == "queued" and queued.status == "queued"
    assert queued.position is not None and queued.position >= 1
    ids = [r.id for r in client_run["listed"]]
    assert ids.index(queued.id) < ids.index(created.id)  # newest first
    stopped: Run = client_run["stopped"]
    assert stopped.status == "stopped" and "model.onnx" not in stopped.files
    with pytest.raises(ServiceError) as caught:
        admin.run(queued.id)
    assert caught.value.status == 404


def test_a_client_run_is_followed_to_its_end(admin: Client, client_run: dict[str, Any]):
    run: Run = client_run["run"]
    assert run.status == "finished", run.error
    assert run.ended and run.test_accuracy is not None and 0 <= run.test_accuracy <= 1
    assert {"model.onnx", "summary.json", "report.html"} <= set(run.files)
    assert run.request is not None and run.request.max_params == 300_000
    assert run.summary is not None and run.summary["test_accuracy"] == run.test_accuracy
    events = client_run["events"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "test" in kinds
    assert events[-1]["data"]["status"] == "finished"
    numbered = [e["id"] for e in events if e["event"] != "end"]
    assert numbered == list(range(1, len(numbered) + 1))
    # a stream resumed after event N starts at N+1, and an ended run's stream ends
    resumed = list(admin.events(run.id, last_event_id=3))
    assert resumed[0]["id"] == 4 and resumed[-1]["event"] == "end"
    assert len(resumed) == len(events) - 3
    assert admin.wait(run.id, timeout=30).status == "finished"


def test_a_client_runs_model_downloads_and_predicts(admin: Client, client_run: dict[str, Any],
                                                    data: dict[str, Path], tmp_path: Path):
    run: Run = client_run["run"]
    model = admin.download(run.id, "model.onnx", tmp_path)
    assert model == tmp_path / "model.onnx"
    admin.download(run.id, "summary.json", tmp_path / "summary.json")
    facts = autofit.load(model).facts()
    assert facts["classes"] == [str(i) for i in range(10)]
    assert facts["test_accuracy"] == pytest.approx(run.test_accuracy)
    with pytest.raises(ServiceError) as caught:
        admin.download(run.id, "nonesuch.bin", tmp_path)
    assert caught.value.status == 404
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "summary.json"]
    images = [data["folder"] / "0" / "000.png", data["folder"] / "7" / "000.png"]
    predictions = admin.predict(run.id, images, top_k=2)
    assert [p.image for p in predictions] == ["000.png", "000.png"]
    for p in predictions:
        assert p.error is None and len(p.top) == 2 and p.label in facts["classes"]
        assert 0 <= p.top[1].probability <= p.top[0].probability <= 1
    assert len(admin.predict(run.id, data["folder"] / "1")) == 80  # a folder: its images


def test_cli_submit_waits_and_prints_the_test_accuracy(cli_run: tuple[Any, str]):
    proc, run_id = cli_run
    lines = proc.stdout.splitlines()
    assert lines[0] == run_id and lines[-1].startswith("test accuracy ")
    assert lines[-1].endswith("| finished")
    assert "uploaded few digits: 240 images, 3 classes" in proc.stderr
    assert "phase search" in proc.stderr or "phase refit" in proc.stderr
    assert f"autofit fetch {run_id}" in proc.stderr


def test_cli_status_and_fetch(served: ss.Server, cli_run: tuple[Any, str], tmp_path: Path):
    _, run_id = cli_run
    listed = autofit_cli("status", "--json", token=served.token, server=served.url)
    assert listed.returncode == 0, listed.stderr
    runs = {r["id"]: r for r in json.loads(listed.stdout)}
    assert runs[run_id]["status"] == "finished"
    table = autofit_cli("status", token=served.token, server=served.url)
    assert table.stdout.splitlines()[0].split()[:3] == ["id", "status", "dataset"]
    assert any(line.startswith(run_id) and "finished" in line
               for line in table.stdout.splitlines())
    one = autofit_cli("status", run_id, token=served.token, server=served.url)
    assert "finished" in one.stdout and "test accuracy" in one.stdout
    got = autofit_cli("fetch", run_id, "--out", str(tmp_path / "got"), token=served.token,
                      server=served.url)
    assert got.returncode == 0, got.stderr
    names = ["model.onnx", "summary.json", "report.html", "leaderboard.csv"]
    assert got.stdout.split() == [str(tmp_path / "got" / n) for n in names]
    facts = autofit.load(tmp_path / "got" / "model.onnx").facts()
    assert facts["classes"] == list(FOLDER_CLASSES)
    assert facts["test_accuracy"] == runs[run_id]["test_accuracy"]
    log = autofit_cli("fetch", run_id, "--out", str(tmp_path / "log"), "--file", "run.log",
                      token=served.token, server=served.url)
    assert log.returncode == 0 and (tmp_path / "log" / "run.log").stat().st_size > 0


def test_cli_errors_are_one_line(served: ss.Server):
    def one_line(proc: subprocess.CompletedProcess[str]) -> str:
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("autofit: error: "), proc.stderr
        return lines[0]

    wrong = autofit_cli("status", token="af_wrong", server=served.url, timeout=60)
    assert wrong.returncode == 1 and "401" in one_line(wrong)
    missing = autofit_cli("status", "nonesuch", token=served.token, server=served.url,
                          timeout=60)
    assert missing.returncode == 1 and "no run nonesuch" in one_line(missing)
    none = autofit_cli("fetch", "x", token=None, server=served.url, timeout=60)
    assert none.returncode == 2 and "AUTOFIT_TOKEN" in one_line(none)
    url = f"http://127.0.0.1:{ss.free_port()}"
    away = autofit_cli("status", token="af_x", server=url, timeout=60)
    assert away.returncode == 1 and f"cannot reach the autofit server at {url}" in one_line(away)
    flag = autofit_cli("status", "--server", url, "--token", "af_x", token=None,
                       server=served.url, timeout=60)
    assert flag.returncode == 1 and url in one_line(flag)  # the flag beats $AUTOFIT_SERVER
