"""A run on a real two-node Ray cluster on loopback (tests/ray_nodes.py): `ray start --head` and a
second `ray start --address`, each with one CPU and its own temp directory. The storage is a
folder that stands for a shared mount. The worker node is killed mid-search and its temp
directory removed, so a run that read anything from that node's disk fails."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_nodes import LoopbackCluster

import autofit
from autofit.records import Summary

BUDGET_MIN = 1.2


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """Ray's defaults for noticing a dead node (about 14 s here), as a user's cluster has."""
    cluster = LoopbackCluster(tmp_path_factory.mktemp("nodes"), system_config=None)
    with cluster:
        yield cluster
    assert not cluster.leftovers()  # only the processes this test started, all gone


def _autofit(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "autofit", "run", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_more_than_one_node_needs_shared_storage(nodes: LoopbackCluster, flat_folder: Path,
                                                 tmp_path: Path):
    """Found through RAY_ADDRESS, as `ray job submit` gives a job's driver the cluster."""
    proc = _autofit(["--data", str(flat_folder), "--minutes", "1", "--out", str(tmp_path / "r")],
                    {**nodes.env, "RAY_ADDRESS": nodes.address})
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "has 2 nodes" in lines[0] and "give --storage" in lines[0], stderr


def _node_of(event: dict[str, object]) -> str:
    return str(event.get("node", "")).rpartition("/")[2]


def test_trials_spread_over_both_nodes_and_a_node_death_is_survived(
        nodes: LoopbackCluster, flat_folder: Path, tmp_path: Path):
    ids = {which: node_id[:8] for which, node_id in nodes.node_ids().items()}
    out, shared = tmp_path / "run", tmp_path / "shared"
    start = time.time()
    proc = _autofit(["--data", str(flat_folder), "--minutes", str(BUDGET_MIN), "--max-params",
                     "100k", "--out", str(out), "--ray-address", nodes.address, "--storage",
                     str(shared)], nodes.env)
    killed_at = None
    while proc.poll() is None and killed_at is None:  # the worker's first trial report
        events = out / "events.jsonl"
        reports = [json.loads(line) for line in events.read_text().splitlines()] \
            if events.is_file() else []
        if any(e["kind"] == "trial_result" and _node_of(e) == ids["worker"] for e in reports):
            nodes.kill_raylet("worker")
            shutil.rmtree(nodes.worker_dir)  # nothing of that node's disk is left to read
            killed_at = time.time() - start
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=BUDGET_MIN * 60 + 60)
    wall = time.time() - start
    assert proc.returncode == 0, stderr[-3000:]
    assert killed_at is not None, "no trial reported from the worker node"

    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.status == "finished"
    assert summary.elapsed_s <= BUDGET_MIN * 60 and wall <= BUDGET_MIN * 60 + 5, (
        summary.elapsed_s, wall)
    by_node = {label.rpartition("/")[2]: n for label, n in summary.trial_nodes.items()}
    assert set(by_node) == set(ids.values()), summary.trial_nodes  # trials on both nodes
    with open(out / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    failed = [row for row in rows if row["status"] == "error"]
    assert any(row["node"].endswith(ids["worker"]) and "Ray node" in row["error"]
               for row in failed), rows  # the trial the death took is recorded as failed
    assert summary.refit is not None and summary.refit.node is not None
    assert summary.refit.node.endswith(ids["head"])  # Ray work on the node that is left
    model = autofit.load(out / "model.onnx")  # verified at export; used as a user would
    predictions = model.predict([flat_folder])
    right = sum(p.labels[0] == Path(p.image).parent.name for p in predictions)
    assert right / len(predictions) >= 0.9  # 4 colour classes
    assert summary.test_accuracy is not None and summary.test_accuracy >= 0.9
    log = (out / "run.log").read_text()
    assert f"ray cluster at {nodes.address}: 2 node(s)" in log


def test_a_driver_killed_in_the_refit_on_the_cluster_resumes_it(
        nodes: LoopbackCluster, flat_folder: Path, tmp_path: Path):
    """One node left (the worker died above), so no --storage is needed: the refit's checkpoint
    goes to RUN_DIR/tune. The driver is killed once the refit (Ray work on the head node) has
    saved its state; the resume continues that state on the cluster and ends inside the
    budget."""
    if nodes.node_alive("worker"):
        nodes.kill_raylet("worker")
    nodes.wait_node_dead("worker", timeout=60)
    out = tmp_path / "run"
    proc = _autofit(["--data", str(flat_folder), "--minutes", str(BUDGET_MIN), "--max-params",
                     "100k", "--out", str(out), "--ray-address", nodes.address], nodes.env)
    checkpoint = out / "tune" / "refit.pt"
    while proc.poll() is None and not checkpoint.is_file():
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=30)
    assert checkpoint.is_file(), "the run ended before its refit saved a state"

    resumed = subprocess.run([sys.executable, "-m", "autofit", "run", "--resume", str(out)],
                             env=nodes.env, capture_output=True, text=True,
                             timeout=BUDGET_MIN * 60 + 60)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "run.log").read_text()
    assert "refit: resuming" in log and "1 node(s)" in log
    summary = Summary.read(out / "summary.json")
    assert summary is not None and summary.status == "finished" and summary.resumes == 1
    assert summary.elapsed_s <= BUDGET_MIN * 60
    assert summary.refit is not None and summary.refit.node is not None
    assert summary.test_accuracy is not None and summary.test_accuracy >= 0.9
    assert not checkpoint.exists()  # a finished refit leaves no state behind
