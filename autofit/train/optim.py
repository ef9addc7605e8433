"""How a recipe turns gradients into weights: optimizers, SAM, the learning-rate schedules and
the EMA of the weights. The training loop (autofit/train/loop.py) only calls these.

One `lr` knob for every optimizer: it is the peak learning rate on SGD's scale, and the
adaptive optimizers (Adam, AdamW, NAdam) run at `ADAPTIVE_LR_FACTOR` times it. The search
space samples its knobs independently (no knob depends on another), so a per-optimizer range
would need conditional knobs; a fixed factor keeps every sampled pair (optimizer, lr) in that
optimizer's usual regime instead: SGD's 0.02-0.4 becomes Adam's 2e-4-4e-3, around the usual
1e-3. `weight_decay` is on SGD's scale too (an L2 coefficient, 5e-5-1e-3): SGD, SAM, Adam and
NAdam add it to the gradient (coupled L2, what those optimizers define); AdamW decouples it and
takes `weight_decay / ADAPTIVE_LR_FACTOR`, so its per-step shrink `lr * wd` equals the one SGD
applies at the same knobs (and lands in AdamW's usual 5e-3-0.1). `momentum` is SGD's momentum
and the adaptive optimizers' beta1 (both 0.9 by default). Biases and norm weights never decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from autofit.train import precision

if TYPE_CHECKING:
    from autofit.config import Recipe

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "sam", "muon")
SCHEDULES = ("onecycle", "cosine")
ADAPTIVE = frozenset({"adam", "adamw", "nadam"})
ADAPTIVE_LR_FACTOR = 0.01  # SGD 0.1 <-> Adam 1e-3: the usual defaults of both
BETA2 = 0.999
# Muon (`Muon`): the norms, biases and head take SGD-Nesterov at MUON_LR_FACTOR of the lr knob,
# the conv filters orthogonalized steps at MUON_FILTER_SCALE of that, with momentum
# MUON_MOMENTUM (airbench94_muon's 0.6) and no decay (their norm is held instead). At knob 0.4
# that is 0.2 and 0.12: the best of knobs 0.2/0.4/0.8/1.6 for the prior at width 24, 4 epochs
# (bench/prior.py; bench/README.md, "Muon for the prior, and the test pass in the plan").
MUON_LR_FACTOR, MUON_FILTER_SCALE, MUON_MOMENTUM = 0.5, 0.6, 0.6
NS_STEPS = 3  # Newton-Schulz iterations (airbench94_muon's)
WARMUP = 0.1  # share of the run spent warming the learning rate up, for both schedules
SAM_RHO = 0.05  # Foret et al.'s radius for CIFAR ResNets; fixed: it applies to one optimizer
EMA_ETA = 9  # polynomial-decay averaging: the EMA spans about the last 1/(EMA_ETA+1) of steps


def peak_lr(recipe: Recipe) -> float:
    """The learning rate the schedule peaks at, on the recipe's optimizer's own scale."""
    if recipe.optimizer == "muon":
        return recipe.lr * MUON_LR_FACTOR
    return recipe.lr * (ADAPTIVE_LR_FACTOR if recipe.optimizer in ADAPTIVE else 1.0)


def build(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model` (for `sam`, its SGD-Nesterov base: see `SAM`).
    Weights of rank 2 and up decay; biases and norm parameters do not. A fine-tuning recipe
    (`backbone_lr_scale` under 1 or `freeze_epochs`) splits both groups into the backbone's
    and the head's (`models.head`): each group's `lr_scale` is its share of the scheduled
    rate (`backbone_lr_scale` for the backbone, 1 for the head) and `backbone` marks the ones
    `freeze_backbone` freezes; any other recipe keeps the two groups of old checkpoints."""
    wd = recipe.weight_decay / ADAPTIVE_LR_FACTOR if recipe.optimizer == "adamw" \
        else recipe.weight_decay
    head: set[int] = set()
    if recipe.backbone_lr_scale != 1.0 or recipe.freeze_epochs > 0:
        from autofit import models

        head = {id(p) for p in models.head(model).parameters()}
    groups = []
    for backbone in ((True, False) if head else (False,)):
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (not head or (id(p) not in head) == backbone):
                (no_decay if p.ndim <= 1 else decay).append(p)
        extra = {"lr_scale": recipe.backbone_lr_scale if backbone else 1.0,
                 "backbone": backbone} if head else {}
        groups += [{"params": decay, "weight_decay": wd, **extra},
                   {"params": no_decay, "weight_decay": 0.0, **extra}]
    lr, betas = peak_lr(recipe), (recipe.momentum, BETA2)
    if recipe.optimizer in ("sgd", "sam"):
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)
    if recipe.optimizer == "muon":
        gpu = any(p.is_cuda for p in model.parameters())
        bf16 = precision.choose("cuda" if gpu else "cpu").bf16
        return Muon(_muon_groups(groups), lr=lr, momentum=recipe.momentum,
                    dtype=torch.bfloat16 if bf16 else torch.float32)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if recipe.optimizer == "nadam":
        return torch.optim.NAdam(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} (known: {', '.join(OPTIMIZERS)})")


def _muon_groups(groups: list[dict]) -> list[dict]:
    """`groups` with their conv filters (rank 4) split off into groups Muon orthogonalizes."""
    out = []
    for group in groups:
        filters = [p for p in group["params"] if p.ndim == 4]
        if filters:
            out.append({**group, "params": filters, "muon": True, "weight_decay": 0.0,
                        "momentum": MUON_MOMENTUM,
                        "lr_scale": group.get("lr_scale", 1.0) * MUON_FILTER_SCALE})
        out.append({**group, "params": [p for p in group["params"] if p.ndim != 4]})
    return out


def freeze_backbone(opt: torch.optim.Optimizer, frozen: bool) -> None:
    """Turn gradients off (or back on) for the backbone's parameters, the `backbone` groups of
    `build`: autograd then stops at the head (a frozen step costs the forward pass and the
    head's backward), and optimizers skip a parameter without a gradient, so the backbone's
    weights do not move at all, weight decay and momentum included. BatchNorm statistics,
    buffers, still follow the new data in training mode."""
    for group in opt.param_groups:
        if group.get("backbone"):
            for p in group["params"]:
                p.requires_grad_(not frozen)


def lr_factor(progress: float, schedule: str = "onecycle") -> float:
    """The share of the peak learning rate at `progress` (0 to 1 of the run): a linear warm-up
    over `WARMUP`, then annealing to zero at 1, linearly (`onecycle`, the triangular 1cycle
    autofit always used; momentum is not cycled) or along a half cosine (`cosine`). Progress
    is the trial's own (steps or seconds, whichever is further), so a run cut short by time
    still warmed up and annealed over the time it was given."""
    if progress < WARMUP:
        return max(progress, 0.0) / WARMUP
    rest = min((progress - WARMUP) / (1.0 - WARMUP), 1.0)
    if schedule == "onecycle":
        return 1.0 - rest
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")


@contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics stay as they are inside (momentum 0, batch counters put
    back): SAM's second pass runs at perturbed weights, whose activation statistics must not
    leak into them."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.momentum is not None]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, counter) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if counter is not None:
                m.num_batches_tracked.copy_(counter)


class SAM:
    """Sharpness-Aware Minimization (Foret et al. 2021) around a base optimizer: with the
    first pass's gradients in `.grad`, move the weights up the gradient to radius `rho`,
    compute the gradients there (a second forward and backward pass), come back, and let the
    base optimizer step with those. Not a torch Optimizer: the base one is what checkpoints
    keep (its momentum buffers), and the perturbation never outlives a step."""

    def __init__(self, base: torch.optim.Optimizer, model: nn.Module,
                 rho: float = SAM_RHO) -> None:
        self.base, self.model, self.rho = base, model, rho

    def step(self, second_pass: Callable[[], Tensor]) -> None:
        """`second_pass` recomputes the loss and its gradients (it calls backward). The
        weights are restored even when it fails (out of memory: the loop retries smaller)."""
        params = [p for group in self.base.param_groups for p in group["params"]
                  if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + 1e-12)
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g * scale)
            self.base.zero_grad(set_to_none=True)
            with frozen_norm_stats(self.model):
                second_pass()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
        self.base.step()


def ema_decay(steps: int) -> float:
    """Decay after `steps` optimizer steps: polynomial-decay averaging (Shamir and Zhang
    2013), 1 - (eta+1)/(steps+eta), which averages over about the last tenth of the steps so
    far. Tied to steps taken, not planned: a time-bounded trial does not know its step count in
    advance, and a fixed decay would span a whole 200-step trial yet a sliver of a long
    refit. Step 1 copies the weights, so the EMA has no start-up bias."""
    return max(0.0, 1.0 - (EMA_ETA + 1) / (max(steps, 1) + EMA_ETA))


class EMA:
    """An exponential moving average of a model's weights, updated after each step.

    Float buffers (BatchNorm running statistics) are averaged with the same decay as the
    weights, so the statistics match the averaged weights' horizon (as torch's AveragedModel
    with use_buffers and timm's ModelEmaV2 do); integer buffers (batch counters) are copied.
    `state` is a state_dict of the model, what checkpoints save and exports load."""

    def __init__(self, model: nn.Module, state: dict[str, Tensor] | None = None) -> None:
        live = model.state_dict()
        if state is None:
            self.state = {k: v.detach().clone() for k, v in live.items()}
        else:
            if set(state) != set(live):
                raise ValueError("EMA state does not match the model's state_dict keys")
            self.state = {k: state[k].to(live[k].device).clone(
                memory_format=torch.preserve_format) for k in live}
        floats = [k for k, v in live.items() if v.is_floating_point()]
        self._ema = [self.state[k] for k in floats]
        self._live = [live[k] for k in floats]  # views of the model's own tensors
        self._copied = [(self.state[k], v) for k, v in live.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, steps: int) -> None:
        """Fold in the model's current weights, `steps` being the steps taken so far."""
        weight = 1.0 - ema_decay(steps)
        if self._ema:
            torch._foreach_lerp_(self._ema, self._live, weight)
        for mine, theirs in self._copied:
            mine.copy_(theirs)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """`model` holds the averaged weights inside, its own ones again after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)


def orthogonalized(g: Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32) -> Tensor:
    """`g` (rows x columns) with its singular values pushed towards 1 by a quintic
    Newton-Schulz iteration (Jordan et al., Muon), computed in `dtype`: in bf16 on a CPU with
    AMX the iterations for fastnet width 48's filters took 10-11 ms a step against 21-28 in
    float32, to the same singular values (0.73-1.20)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    x = x / (x.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024; airbench94_muon) for the conv filters, SGD-Nesterov for the
    rest, in one optimizer so checkpoints keep both. A filter group (`muon`) steps by its
    Nesterov momentum orthogonalized (`orthogonalized`), its weights first rescaled to norm
    sqrt(out channels): BatchNorm follows every conv, so only their direction matters, and the
    fixed norm stands for weight decay."""

    def __init__(self, groups: list[dict], lr: float, momentum: float,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0,
                                  "muon": False})
        self.dtype = dtype  # of the orthogonalization: bf16 where training runs in it

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not wd else p.grad.add(p, alpha=wd)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum)
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / (p.norm() + 1e-12))
                    g = orthogonalized(g.reshape(len(g), -1), dtype=self.dtype).view_as(p)
                p.add_(g, alpha=-lr)
