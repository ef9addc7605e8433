"""The compute side of the budget: MACs per model, this machine's training rate, and the
compute cap the plan turns them into, which sampling then respects."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from autofit import models, probe
from autofit.budget import TRAIN_PASSES, Budget, Clock, Plan
from autofit.models import DataShape
from autofit.presets import preset
from autofit.space import SearchSpace

CIFAR = DataShape(3, 32, 32, 10)


@pytest.mark.parametrize("family, arch, millions", [
    ("resnet", {"depth": 20, "width": 16}, 40.8),  # ResNet-20's published ~41M
    ("resnet", {"depth": 8, "width": 16}, 12.5),
    ("wrn", {"depth": 16, "widen": 4}, 392.6),
    ("fastnet", {"width": 64, "depth": 2}, 151.9),
])
def test_macs_are_counted_before_training(family, arch, millions):
    assert models.count_macs(family, arch, CIFAR) / 1e6 == pytest.approx(millions, abs=0.1)


def test_macs_match_a_count_by_hand_on_real_weights():
    """The meta-device count equals convolution arithmetic done on a real forward pass."""
    net = models.build_for("fastnet", {"width": 16, "depth": 2}, CIFAR).eval()
    by_hand = 0

    def add(module, inputs, out):
        nonlocal by_hand
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.weight.shape[2:]
            by_hand += out.shape[1] * out.shape[2] * out.shape[3] * module.weight.shape[1] \
                * k_h * k_w
        elif isinstance(module, nn.Linear):
            by_hand += module.weight.numel()

    for module in net.modules():
        module.register_forward_hook(add)
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32))
    assert models.count_macs("fastnet", {"width": 16, "depth": 2}, CIFAR) == by_hand


def test_the_probe_measures_a_rate_that_predicts_real_training_speed():
    rate = probe.mac_rate(CIFAR, "cpu", 2)
    assert 1e8 < rate < 1e13
    arch = {"depth": 8, "width": 32}  # 4x the reference's MACs: predicted about 4x slower
    net = models.build_for("resnet", arch, CIFAR).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.rand(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    nn.CrossEntropyLoss()(net(x), y).backward()
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        opt.zero_grad()
        nn.CrossEntropyLoss()(net(x), y).backward()
        opt.step()
        images += 64
    measured = images / (time.perf_counter() - start)
    predicted = rate / (TRAIN_PASSES * models.count_macs("resnet", arch, CIFAR))
    assert 0.33 < measured / predicted < 3.0, (measured, predicted)


def test_the_plan_caps_compute_so_the_refit_affords_min_epochs():
    budget = Budget(minutes=10, max_params="2M", min_epochs=10)
    plan = Plan.make(budget, Clock(budget.seconds), 10_000, n_train=50_000, mac_rate=5e10)
    assert plan.max_macs == int(plan.refit_s * 5e10 / (TRAIN_PASSES * 10 * 50_000))
    # a model at the cap trains min_epochs epochs of 50k images in the refit's seconds
    epochs = plan.refit_s * 5e10 / (TRAIN_PASSES * plan.max_macs) / 50_000
    assert epochs == pytest.approx(10, rel=1e-3)
    off = Budget(minutes=10, max_params="2M", min_epochs=0)
    assert Plan.make(off, Clock(off.seconds), 10_000, n_train=50_000,
                     mac_rate=5e10).max_macs is None
    assert Plan.make(budget, Clock(budget.seconds), 10_000).max_macs is None  # no probe


@pytest.mark.parametrize("space_name", ["default", "fastnet", "resnet", "wrn"])
def test_samples_respect_both_caps_and_still_use_the_parameter_budget(space_name):
    space = SearchSpace.load(preset("search_spaces", space_name))
    rng = np.random.default_rng(0)
    cap = 20_000_000
    for _ in range(15):
        config = space.sample(rng, CIFAR, 2_000_000, max_macs=cap)
        assert config.params <= 2_000_000
        assert config.macs == models.count_macs(config.family, config.arch, CIFAR) <= cap


def test_a_compute_cap_below_every_model_falls_back_to_the_parameter_cap_alone():
    space = SearchSpace.load(preset("search_spaces", "default"))
    config = space.sample(np.random.default_rng(0), CIFAR, 2_000_000, max_macs=1)
    assert config.params <= 2_000_000 and config.macs > 1
