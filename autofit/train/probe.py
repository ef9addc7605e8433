"""How fast this machine trains: the price of a training image in seconds, per forward
multiply-accumulate and per activation value, from two short real training runs.

The plan turns it into the search's split and compute cap (budget.Plan): a model whose refit
could not see the images the compute frontier asks of it in the time the refit gets is not
worth a trial. One MAC rate alone mis-timed models by up to 4x on a CPU (narrow deep nets are
bound by memory traffic, wide shallow ones by arithmetic); two reference models with different
ratios of arithmetic to activations, trained on random pixels in turns (about a second each) on
the device and threads the trials will use, price both and timed a dozen models of every family
at 0.76-1.67x their measured cost on this 2-core CPU (bench/results/cost_model.json).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from autofit import models
from autofit.budget import Cost
from autofit.config import Recipe
from autofit.data import pipeline
from autofit.models import DataShape
from autofit.train import optim, precision

REFERENCES = (("resnet", {"depth": 8, "width": 8}),  # narrow: activations dominate
              ("fastnet", {"width": 32, "depth": 2}))  # wide, shallow: arithmetic dominates
BATCH = 128  # the middle of the batch sizes the spaces draw
PROBE_S = 1.0  # per model, split over ROUNDS
# A one-second timing once read the wide reference at 1.13 ms per image where every other run
# that day read 0.56: the machine stalled for part of it, and the compute cap halved the
# 10-minute width. Timing the models in turn, a few times, and keeping each one's fastest
# round leaves out a stall that short.
ROUNDS = 3
# The references' two prices are a model: they put the 10-minute CIFAR-10 refit's model
# (fastnet width 44, batch 256) at 0.94 ms per image, and the refit trained at 1.47 ms and saw
# 7.3 of the 11.9 epochs planned (float32, 2-core AMD EPYC); timed alone it took 1.60 ms at
# batch 128 and 1.74 at 256, width 20 0.49 where priced 0.35. So the model a plan would train
# is timed on its own at its own batch, and the prices scaled to match (`checked`).
CHECK_S, CHECK_ROUNDS = 0.6, 2
# The model timed alone leaves out the data: DALI's CPU pipeline runs between steps, not beside
# them, and adds its own time to every image. The clothing photos' 2-minute refit (96x128)
# trained at 0.87 ms per image where its model timed 0.62 alone; their loader alone took 0.13
# (batch 64) and a model fed by it 0.66 where it timed 0.53 on random pixels. At 32x32 the
# loader takes 0.02. So the loader is timed on the run's own images, DATA_BATCHES batches
# after an untimed one, and its time added to every model's price (Cost.data_s).
DATA_BATCHES = 8


def _stepper(family: str, arch: dict[str, int], shape: DataShape, device: str,
             batch: int = BATCH, optimizer: str = "sgd") -> Callable[[], None]:
    """One step of the model by `optimizer` on random pixels (no data loading) at the
    precision training runs at on `device` (autofit/train/precision.py), already taken once:
    the first step pays for allocations and kernel choice."""
    net = models.build_for(family, arch, shape).to(device, memory_format=torch.channels_last)
    opt = optim.build(net, Recipe(batch_size=batch, lr=0.01, weight_decay=0.0,
                                  optimizer=optimizer))  # type: ignore[arg-type]
    x = torch.rand(batch, shape.channels, shape.height, shape.width, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, shape.num_classes, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    bf16 = precision.choose(device).bf16

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision.autocast(device, bf16):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    step()
    return step


def _timed(step: Callable[[], None], seconds: float, device: str, batch: int) -> float:
    """Seconds per image over at least `seconds` and two batches of steps."""
    if device == "cuda":
        torch.cuda.synchronize()
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or images < 2 * batch:
        step()
        images += batch
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / images


def seconds_per_image(nets: Sequence[tuple[str, dict[str, int]]], shape: DataShape,
                      device: str, seconds: float = PROBE_S, rounds: int = ROUNDS,
                      batch: int = BATCH, optimizer: str = "sgd") -> list[float]:
    """Measured training seconds per image of each (family, arch) at `batch`: the models
    take turns, `rounds` times, for `seconds` each in all, and each keeps its fastest round."""
    steps = [_stepper(family, arch, shape, device, batch, optimizer) for family, arch in nets]
    best = [math.inf] * len(steps)
    for _ in range(rounds):
        for i, step in enumerate(steps):
            best[i] = min(best[i], _timed(step, seconds / rounds, device, batch))
    return best


def cost(shape: DataShape, device: str, threads: int) -> Cost:
    """Seconds per training image as s_per_mac * MACs + s_per_act * activations, solved from
    the two references' measured times (each price kept non-negative)."""
    torch.set_num_threads(threads)
    work = np.array([models.count_work(f, a, shape) for f, a in REFERENCES], dtype=float)
    times = np.array(seconds_per_image(REFERENCES, shape, device))
    try:
        prices = np.linalg.solve(work, times)
    except np.linalg.LinAlgError:
        prices = np.array([-1.0, -1.0])
    if (prices <= 0).any():
        prices = one_price(work, times)
    return Cost(s_per_mac=float(prices[0]), s_per_act=float(prices[1]),
                reference_s=float(times[-1]))


def checked(cost: Cost, family: str, arch: dict[str, int], shape: DataShape, device: str,
            batch: int, optimizer: str = "sgd") -> tuple[Cost, float]:
    """`cost` scaled to price (family, arch) at `batch` as this machine trains it with
    `optimizer`, and the seconds per image measured (CHECK_S, CHECK_ROUNDS). The references
    step by SGD; Muon's orthogonalizations cost per step, not per image: the 2-minute
    CIFAR-10 refit of width 20 at batch 64 ran at 1.47x the price SGD's steps timed."""
    measured = seconds_per_image([(family, arch)], shape, device, seconds=CHECK_S,
                                 rounds=CHECK_ROUNDS, batch=batch, optimizer=optimizer)[0]
    priced = max(cost.model_seconds(models.count_work(family, arch, shape)), 1e-12)
    return cost.model_copy(update={"scale": cost.scale * measured / priced}), measured


def data_seconds(path: str, images: np.ndarray, labels: np.ndarray, recipe: Recipe,
                 device: str, threads: int) -> float:
    """Seconds per image the run's training loader takes at `recipe`'s batch and
    augmentation, on the first images of the training split (DATA_BATCHES)."""
    n = min(len(labels), (DATA_BATCHES + 1) * recipe.batch_size)
    loader = pipeline.training_loader(path, images[:n], labels[:n], recipe, seed=0,
                                      threads=threads, device=device)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # a small set: again
    next(batches)  # builds and warms the pipeline
    if device == "cuda":
        torch.cuda.synchronize()
    seen, start = 0, time.perf_counter()
    for _, (_, y) in zip(range(DATA_BATCHES), batches, strict=False):
        seen += len(y)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(seen, 1)


def one_price(work: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Where the two references make one price negative, a single price, per MAC or per
    activation, whichever times both references closer (least squares, then the worse of
    the two ratios). Noise can do it; so does bf16 on a CPU, where MACs got so cheap that the
    narrow reference took as long as the wide one (0.39 against 0.40 ms per image) with a
    tenth of its MACs and half its activations: priced by MACs alone, the narrow nets came
    out 10x too cheap, by activations alone within 0.6-1.5x (models of every family)."""
    best, best_error = np.zeros(2), np.inf
    for column in range(2):
        counts = work[:, column]
        price = float(times @ counts / (counts @ counts))
        error = float(np.max(np.abs(np.log(price * counts / times))))
        if price > 0 and error < best_error:
            best, best_error = np.eye(2)[column] * price, error
    return best
