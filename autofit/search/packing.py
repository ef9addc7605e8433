"""Several trials on one GPU when the space's models are small (fractional GPUs in Ray Tune).

A small CIFAR model leaves most of a large GPU idle, so one trial per GPU wastes the search's
time. Before the trials start, `probe_peak_memory` measures what the most demanding trial the
space can produce holds on the device (the largest models under the cap, at the largest batch
size, with the data cache a trial keeps there), and `trials_per_gpu` turns that into how many
trials share a GPU. The estimate need not be exact: a trial that still runs out of memory
retries at half its batch size (autofit/train/loop.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autofit.config import Recipe, TrialConfig
from autofit.models import DataShape
from autofit.search.space import SearchSpace

# Device memory a trial's process holds outside PyTorch's allocator (its CUDA context, cuDNN
# and cuBLAS workspaces, DALI's buffers): not seen by the probe's counters, so added to them.
PROCESS_BYTES = 1 << 30
PROBE_SAMPLES = 4  # random draws probed besides each family's largest model
GPU_SHARE_DECIMALS = 4  # Ray keeps fractional resources to 1e-4


def trials_per_gpu(peak_bytes: int, total_bytes: int, max_trials: int = 8,
                   headroom: float = 0.8) -> int:
    """How many trials that each hold `peak_bytes` fit on a GPU of `total_bytes`, using at
    most `headroom` of it (fragmentation, and the probe missing the worst case), between 1
    and `max_trials` (beyond that, trials starve each other of compute, not memory).

    A trial that alone needs more than the headroom still gets a whole GPU: 1, never 0.
    """
    if peak_bytes <= 0 or total_bytes <= 0:
        raise ValueError(f"peak_bytes ({peak_bytes}) and total_bytes ({total_bytes}) must be "
                         "positive")
    if not 0.0 < headroom <= 1.0:
        raise ValueError(f"headroom must be in (0, 1], not {headroom}")
    if max_trials < 1:
        raise ValueError(f"max_trials must be at least 1, not {max_trials}")
    return max(1, min(max_trials, int(headroom * total_bytes // peak_bytes)))


def gpu_share(trials: int) -> float:
    """The fractional GPU each of `trials` asks Ray for: 1/trials rounded down to Ray's
    precision, so that `trials` of them still fit on one GPU (1/6 rounded up would not)."""
    scale = 10**GPU_SHARE_DECIMALS
    return math.floor(scale / trials) / scale


@dataclass(frozen=True)
class Probe:
    """What the memory probe needs (picklable: it runs in a Ray task on a GPU worker).

    `data_bytes`: the uint8 cache each trial keeps on its GPU (the DALI GPU path keeps its
    training and validation images there; other paths keep none). `train_images` caps the
    batch size as the loaders do."""

    space: SearchSpace
    shape: DataShape
    max_params: int
    data_bytes: int = 0
    train_images: int | None = None
    seed: int = 0


def candidates(probe: Probe) -> list[TrialConfig]:
    """Configurations to measure: each family's largest model under the cap (every knob at
    its top, shrunk by the space's own fitting) and a few random draws, all at the largest
    batch size the space has, training with Adam's two state buffers and an EMA copy (the
    most memory any recipe knob asks for)."""
    space, shape, cap = probe.space, probe.shape, probe.max_params
    batch = int(max(space.training["batch_size"].values()))
    if probe.train_images:
        batch = max(1, min(batch, probe.train_images))
    rng = np.random.default_rng(probe.seed)
    configs = []
    for family, knobs in space.families.items():
        top = {name: int(max(knob.values())) for name, knob in knobs.items()}
        fitted = space.fit(family, top, shape, cap)
        if fitted is not None:
            recipe = space.sample(rng, shape, cap).recipe
            configs.append(TrialConfig(family=family, arch=fitted[0], recipe=recipe,
                                       params=fitted[1]))
    configs += [space.sample(rng, shape, cap) for _ in range(PROBE_SAMPLES)]
    heaviest = {"batch_size": batch, "optimizer": "adam", "ema": True}
    return [c.model_copy(update={"recipe": Recipe(**{**c.recipe.model_dump(), **heaviest})})
            for c in configs]


def probe_peak_memory(probe: Probe) -> int | None:
    """Bytes of GPU memory the most demanding probed trial holds: the peak PyTorch reserved
    during one training step (forward under training's autocast, backward, optimizer step) with the
    data cache in place, plus PROCESS_BYTES. None without CUDA: the caller keeps one trial
    per GPU. A probe that runs out of memory returns the device's whole memory (one trial)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from autofit.train import optim, precision
    from autofit.train.loop import make_model

    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    shape, peak = probe.shape, 0
    for config in candidates(probe):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            cache = torch.empty(probe.data_bytes, dtype=torch.uint8, device=device)
            model = make_model(config, shape, [0.5] * shape.channels, [0.25] * shape.channels,
                               "cuda")
            opt = optim.build(model, config.recipe)
            ema = optim.EMA(model) if config.recipe.ema else None
            batch = config.recipe.batch_size
            x = torch.rand(batch, shape.channels, shape.height, shape.width, device=device)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, shape.num_classes, (batch,), device=device)
            with precision.autocast("cuda"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(1)
            torch.cuda.synchronize(device)
            peak = max(peak, torch.cuda.max_memory_reserved(device))
        except torch.OutOfMemoryError:
            return total
        finally:
            cache = model = opt = ema = x = y = loss = None  # noqa: F841 - frees before the next
        torch.cuda.empty_cache()
    return peak + PROCESS_BYTES


def measure(probe: Probe) -> tuple[int, int] | None:
    """(bytes one trial holds, bytes the GPU has), on this process's GPU; None without CUDA.
    Run in a Ray task given one GPU, so it measures the device the trials will use."""
    import torch

    peak = probe_peak_memory(probe)
    if peak is None:
        return None
    return peak, torch.cuda.get_device_properties(torch.device("cuda")).total_memory
