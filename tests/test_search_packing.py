"""GPU packing (autofit/search/packing.py): how many trials share a GPU, and the resources each
gets.
No GPU here: the arithmetic is tested with given memory sizes, the probe only for saying None
without CUDA, and the GPU path itself is unverified by these tests."""

from __future__ import annotations

import logging

import pytest
import torch

from autofit import models
from autofit.models import DataShape
from autofit.presets import preset
from autofit.search.cluster import Workers, describe_workers, plan_workers, ray_session
from autofit.search.packing import (
    Probe,
    candidates,
    gpu_share,
    measure,
    probe_peak_memory,
    trials_per_gpu,
)
from autofit.search.space import SearchSpace

GIB = 1 << 30
CIFAR = DataShape(3, 32, 32, 10)


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.load(preset("search_spaces", "default"))


@pytest.mark.parametrize("peak,total,expected", [
    (10 * GIB, 100 * GIB, 8),     # 8 would fit in 80 GiB: exactly the limit
    (11 * GIB, 100 * GIB, 7),     # 80 // 11
    (3 * GIB, 141 * GIB, 8),      # capped at max_trials: compute, not memory, is the limit
    (40 * GIB, 100 * GIB, 2),
    (60 * GIB, 100 * GIB, 1),     # only one fits the headroom
    (200 * GIB, 100 * GIB, 1),    # more than the GPU: still one trial (it retries at half batch)
    (1, 1, 1),
])
def test_trials_per_gpu(peak: int, total: int, expected: int):
    assert trials_per_gpu(peak, total) == expected


def test_trials_per_gpu_follows_headroom_and_limit():
    assert trials_per_gpu(GIB, 16 * GIB, max_trials=100) == 12  # 0.8 * 16 = 12.8
    assert trials_per_gpu(GIB, 16 * GIB, max_trials=100, headroom=1.0) == 16
    assert trials_per_gpu(GIB, 16 * GIB, max_trials=3) == 3
    assert trials_per_gpu(GIB, 16 * GIB, max_trials=1) == 1
    counts = [trials_per_gpu(peak * GIB // 4, 80 * GIB, max_trials=1000) for peak in range(1, 400)]
    assert counts == sorted(counts, reverse=True)  # more memory per trial, never more trials


@pytest.mark.parametrize("peak,total,kwargs", [
    (0, GIB, {}), (-1, GIB, {}), (GIB, 0, {}), (GIB, GIB, {"headroom": 0.0}),
    (GIB, GIB, {"headroom": 1.5}), (GIB, GIB, {"max_trials": 0}),
])
def test_trials_per_gpu_refuses_nonsense(peak: int, total: int, kwargs: dict[str, float]):
    with pytest.raises(ValueError):
        trials_per_gpu(peak, total, **kwargs)


@pytest.mark.parametrize("k", range(1, 17))
def test_gpu_share_lets_k_trials_fit_one_gpu(k: int):
    share = gpu_share(k)
    assert k * share <= 1.0 and 1 / k - share < 1e-4 and share == round(share, 4)


def test_candidates_are_the_heaviest_trials_within_the_cap(space: SearchSpace):
    probe = Probe(space, CIFAR, 300_000)
    configs = candidates(probe)
    assert {c.recipe.batch_size for c in configs} == {256}
    assert all(c.recipe.optimizer == "adam" and c.recipe.ema for c in configs)
    assert all(c.params <= 300_000 for c in configs)
    assert all(c.params == models.count_for(c.family, c.arch, CIFAR) for c in configs)
    assert [c.family for c in configs[:2]] == list(space.families)  # each family's largest
    largest = configs[1]  # every knob at its top, fitted: the deepest ResNet under the cap
    assert largest.family == "resnet" and largest.arch["depth"] == 32
    assert {c.recipe.batch_size for c in candidates(Probe(space, CIFAR, 300_000,
                                                          train_images=100))} == {100}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_probe_says_none_without_cuda(space: SearchSpace):
    probe = Probe(space, CIFAR, 300_000, data_bytes=10 * GIB)
    assert probe_peak_memory(probe) is None and measure(probe) is None


def test_cpu_workers_are_as_before():
    local = plan_workers([{"CPU": 2.0, "memory": 1e9}], "cpu")
    assert local == Workers("", 2, 0, 1)
    cluster = plan_workers([{"CPU": 8.0}, {"CPU": 8.0}, {"CPU": 4.0}], "cpu", (GIB, 80 * GIB))
    assert cluster == Workers("", 8, 0, 2)  # nodes with a whole trial's CPUs; no probe used
    assert describe_workers(local, "local ray", 1) == \
        "local ray: 1 node(s), 1 trial(s) at a time, 2 CPUs each"


def test_gpu_workers_without_a_probe_get_whole_gpus():
    workers = plan_workers([{"CPU": 16.0, "GPU": 2.0}], "cuda", None, "no memory probe asked for")
    assert (workers.trial_cpus, workers.trial_gpus, workers.concurrency) == (16, 1, 2)
    assert workers.packing == {"trials_per_gpu": 1, "peak_bytes": None, "gpu_bytes": None,
                               "note": "no memory probe asked for"}
    assert describe_workers(workers, "local ray", 1).endswith(
        "2 trial(s) at a time, 16 CPUs each, 1 per GPU (no memory probe asked for)")


@pytest.mark.parametrize("nodes,measured,expected", [
    # one H200-sized GPU, small models: 8 trials, 2 CPUs and an eighth of the GPU each
    ([{"CPU": 16.0, "GPU": 1.0}], (3 * GIB, 141 * GIB), (2, 0.125, 8, 8)),
    # two GPUs on a node: its CPUs split over 2 x 3 trials
    ([{"CPU": 16.0, "GPU": 2.0}], (20 * GIB, 80 * GIB), (2, 0.3333, 3, 6)),
    # fewer CPUs than trials: each still gets one
    ([{"CPU": 4.0, "GPU": 1.0}], (GIB, 80 * GIB), (1, 0.125, 8, 8)),
    # a model too big to share: as before, a whole GPU and the node's CPUs
    ([{"CPU": 16.0, "GPU": 1.0}], (50 * GIB, 80 * GIB), (16, 1, 1, 1)),
    # a cluster: two single-GPU nodes and a CPU-only head
    ([{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}],
     (10 * GIB, 40 * GIB), (2, 0.3333, 3, 6)),
])
def test_gpu_workers_are_packed_by_the_probe(nodes, measured, expected):
    workers = plan_workers(nodes, "cuda", measured)
    per_gpu = expected[2]
    assert (workers.trial_cpus, workers.trial_gpus, workers.packing["trials_per_gpu"],
            workers.concurrency) == expected
    assert workers.packing["peak_bytes"] == measured[0] and per_gpu * workers.trial_gpus <= 1
    assert f"{per_gpu} per GPU (memory probe: " in describe_workers(workers, "local ray", 1)


def test_ray_session_on_cpu_ignores_the_probe(space: SearchSpace):
    """A real local Ray: on the CPU a probe changes nothing (it is not even run)."""
    log = logging.getLogger("test-packing")
    with ray_session(None, 1, "cpu", log, Probe(space, CIFAR, 300_000)) as workers:
        assert (workers.trial_cpus, workers.trial_gpus, workers.concurrency) == (1, 0, 1)
        assert workers.packing is None
        assert workers.where == "local ray: 1 node(s), 1 trial(s) at a time, 1 CPUs each"
