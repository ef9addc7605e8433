"""How fast this machine trains: multiply-accumulates per second of a short real training run.

The search uses it to turn the time budget into a compute cap (budget.Plan.max_macs): a model
whose refit could not see `min_epochs` epochs in the time the plan gives it is not worth a
trial. One reference model (ResNet-8, width 16, built for the data's shape) trains on random
pixels for about a second on the device and threads the trials will use.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from autofit import models
from autofit.budget import TRAIN_PASSES
from autofit.models import DataShape

REFERENCE = ("resnet", {"depth": 8, "width": 16})
BATCH = 64
PROBE_S = 1.0


def mac_rate(shape: DataShape, device: str, threads: int) -> float:
    """Training MACs per second (forward MACs of each image times TRAIN_PASSES)."""
    torch.set_num_threads(threads)
    family, arch = REFERENCE
    net = models.build_for(family, arch, shape).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(BATCH, shape.channels, shape.height, shape.width, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, shape.num_classes, (BATCH,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    step()  # the first step pays for allocations and kernel choice
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < PROBE_S or images < 2 * BATCH:
        step()
        images += BATCH
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return TRAIN_PASSES * models.count_macs(family, arch, shape) * images / seconds
