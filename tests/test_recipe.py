"""Training recipe knobs (issue 4): optimizers, SAM, schedules, dropout, weight EMA, test-time
flips, and how a search space declares them. Real models on small synthetic data."""

import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import NaNNet, two_class
from torch import nn

from autofit import models
from autofit.config import Recipe, TrialConfig
from autofit.data.pipeline import BatchLoader
from autofit.deliver.best import MODEL, BestSoFar
from autofit.deliver.export import export_onnx, to_input
from autofit.errors import UsageError
from autofit.models import Classifier, DataShape
from autofit.presets import preset
from autofit.search.space import SearchSpace
from autofit.train import optim, precision
from autofit.train.loop import (
    CHECKPOINT_FILE,
    evaluate,
    load_state,
    make_model,
    save_state,
    train,
    weights,
)

SHAPE = DataShape(1, 8, 8, 2)
ARCH = {"depth": 8, "width": 8}
BASE = Recipe(batch_size=32, lr=0.1, weight_decay=5e-4)




def _model(tta=False):
    torch.manual_seed(0)
    return Classifier(models.build_for("resnet", ARCH, SHAPE), [0.3], [0.3], tta=tta)


def _loss(model, x, y):
    model.eval()
    with torch.no_grad():
        inputs = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        value = nn.functional.cross_entropy(model(inputs), torch.from_numpy(y)).item()
    model.train()
    return value


def _count_forwards(model):
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]) if m.training
                                else None)
    return calls


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_trains_the_loss_down(name):
    x, y = two_class()
    model = _model()
    before = _loss(model, x, y)
    final = train(model, BatchLoader(x, y, 32, train=True), BASE.model_copy(
                  update={"optimizer": name}), stop_at=time.time() + 60, total_steps=40,
                  val=BatchLoader(x, y, 64, train=False))
    assert final.state == "completed" and final.steps == 40
    assert _loss(model, x, y) < 0.5 * before and final.val_accuracy > 0.9


def test_adaptive_optimizers_run_at_a_hundredth_of_the_lr_knob_and_adamw_decouples():
    model = _model()
    sgd = optim.build(model, BASE)
    adamw = optim.build(model, BASE.model_copy(update={"optimizer": "adamw"}))
    adam = optim.build(model, BASE.model_copy(update={"optimizer": "adam"}))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["lr"] == pytest.approx(1e-3)
    # the same per-step shrink lr * wd as SGD at the same knobs
    assert adamw.param_groups[0]["weight_decay"] * adamw.defaults["lr"] == pytest.approx(
        sgd.param_groups[0]["weight_decay"] * sgd.defaults["lr"])
    assert adam.param_groups[0]["weight_decay"] == BASE.weight_decay  # coupled L2
    assert all(g["weight_decay"] == 0.0 for g in (sgd.param_groups[1], adam.param_groups[1]))


def test_sam_makes_two_passes_per_step():
    x, y = two_class()
    for name, passes in (("sgd", 1), ("sam", 2)):
        model = _model()
        calls = _count_forwards(model)
        final = train(model, BatchLoader(x, y, 32, train=True),
                      BASE.model_copy(update={"optimizer": name}), stop_at=time.time() + 60,
                      total_steps=5)
        assert final.steps == 5 and len(calls) == 5 * passes


def _one_step(model, optimizer, x, y, rho):
    inputs = torch.from_numpy(x[:32].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    labels = torch.from_numpy(y[:32])

    def forward_backward():
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return loss

    optimizer.zero_grad()
    forward_backward()
    if rho is None:
        optimizer.step()
    else:
        optim.SAM(optimizer, model, rho).step(forward_backward)


def test_sam_at_radius_zero_is_its_sgd_base_and_keeps_norm_statistics():
    x, y = two_class()
    plain, sharp, zero = _model(), _model(), _model()
    for model, rho in ((plain, None), (sharp, 0.05), (zero, 0.0)):
        _one_step(model, optim.build(model, BASE), x, y, rho)
    a, b, c = plain.state_dict(), sharp.state_dict(), zero.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)  # same weights and BatchNorm statistics
    assert any(not torch.equal(a[k], b[k]) for k in a if "weight" in k)  # the perturbed grads
    running = [k for k in a if "running" in k]
    assert all(torch.equal(a[k], b[k]) for k in running)  # the second pass left no trace


def test_sam_restores_the_weights_when_its_second_pass_runs_out_of_memory():
    x, y = two_class()
    model = _model()
    opt = optim.build(model, BASE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _count_forwards(model)

    def fault(module, args, output):  # fault injection: the second pass fails
        if len(calls) >= 2:
            raise torch.OutOfMemoryError("injected")

    model.register_forward_hook(fault)
    with pytest.raises(torch.OutOfMemoryError):
        _one_step(model, opt, x, y, 0.05)
    after = model.state_dict()
    weights_ = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in weights_)


def test_sam_retries_out_of_memory_with_a_smaller_batch():
    x, y = two_class()
    model = _model()
    calls = _count_forwards(model)

    def fault(module, args, output):  # fault injection: full batches fail in the second pass
        if args[0].shape[0] >= 32 and len(calls) % 2 == 0:
            raise torch.OutOfMemoryError("injected")

    model.register_forward_hook(fault)
    final = train(model, BatchLoader(x, y, 32, train=True),
                  BASE.model_copy(update={"optimizer": "sam"}), stop_at=time.time() + 60,
                  total_steps=10)
    assert final.state == "completed" and final.oom_retries == 1 and final.batch_size == 16
    assert all(torch.isfinite(p).all() for p in model.parameters())




@pytest.mark.parametrize("name", ["sam", "adamw"])
def test_nan_loss_stops_as_diverged_with_any_optimizer(name):
    x, y = two_class()
    final = train(NaNNet(), BatchLoader(x, y, 32, train=True),
                  BASE.model_copy(update={"optimizer": name, "ema": True}),
                  stop_at=time.time() + 60, total_steps=100)
    assert final.state == "diverged" and final.steps == 1


def test_ema_decay_grows_with_the_steps_taken():
    assert optim.ema_decay(1) == 0.0  # the first update copies: no start-up bias
    decays = [optim.ema_decay(s) for s in (10, 100, 1000, 10_000)]
    assert decays == sorted(decays) and decays[-1] > 0.999
    assert 1 / (1 - optim.ema_decay(1000)) == pytest.approx(100, rel=0.02)  # ~ last tenth


def test_ema_averages_float_state_and_copies_counters():
    model = _model()
    ema = optim.EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.net.stem[1].running_mean.add_(1.0)
        model.net.stem[1].num_batches_tracked.add_(5)
    ema.update(11)  # decay 0.5
    weight = 1 - optim.ema_decay(11)
    live = model.state_dict()
    key = "net.head.bias"
    assert torch.allclose(ema.state[key], live[key] - 1.0 + weight)
    assert torch.allclose(ema.state["net.stem.1.running_mean"], torch.full((8,), weight))
    assert int(ema.state["net.stem.1.num_batches_tracked"]) == 5


def test_ema_is_evaluated_kept_in_checkpoints_and_restored_on_resume(tmp_path):
    x, y = two_class()
    recipe = BASE.model_copy(update={"ema": True})
    model = _model()
    states, reports = [], []

    def report(progress, state):  # a copy: a state's tensors are the live ones
        reports.append(progress)
        states.append(copy.deepcopy(state()))

    val = BatchLoader(x, y, 64, train=False)
    final = train(model, BatchLoader(x, y, 32, train=True), recipe, stop_at=time.time() + 60,
                  total_steps=20, val=val, report=report)
    saved = states[-1]
    assert set(saved) == {"model", "optimizer", "counters", "ema"}
    raw, averaged = saved["model"], saved["ema"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if k.endswith("weight"))
    # the returned model holds the EMA weights, the ones the last report evaluated
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    assert evaluate(model, val)[0] == final.val_accuracy
    assert weights(saved) is averaged

    save_state(saved, tmp_path / CHECKPOINT_FILE)  # weights_only round trip
    loaded = load_state(tmp_path / CHECKPOINT_FILE)
    resumed = _model()
    again = train(resumed, BatchLoader(x, y, 32, train=True), recipe, stop_at=time.time() + 60,
                  total_steps=20, resume=loaded)
    assert again.steps == 20 and again.state == "completed"  # nothing left to train
    assert all(torch.equal(v, averaged[k]) for k, v in resumed.state_dict().items())

    more, saves = _model(), []  # resumed with steps left: the EMA goes on from the saved one
    longer = train(more, BatchLoader(x, y, 32, train=True), recipe, stop_at=time.time() + 60,
                   total_steps=21, resume=load_state(tmp_path / CHECKPOINT_FILE),
                   save=lambda state: saves.append(copy.deepcopy(state)), save_every_s=0.0)
    assert longer.steps == 21 and len(saves) == 1
    weight, raw21 = 1 - optim.ema_decay(21), saves[0]["model"]
    for key, value in more.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, averaged[key] * (1 - weight) + raw21[key] * weight,
                                  atol=1e-6)


def test_tta_logits_are_the_mean_of_the_image_and_its_mirror():
    plain, flipped = _model(), _model(tta=True)
    assert list(plain.state_dict()) == list(flipped.state_dict())
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        plain.eval()
        flipped.eval()
        want = (plain(x) + plain(x.flip(3))) / 2
        assert torch.allclose(flipped(x), want, atol=1e-6)
        assert not torch.allclose(flipped(x), plain(x), atol=1e-4)
    flipped.train()
    calls = _count_forwards(flipped.net)
    flipped(x)
    assert len(calls) == 1  # training sees one view: the loader already flips at random


def test_translate_tta_adds_the_views_shifted_a_pixel_each_way():
    plain, both = _model(tta=True), _model(tta=True)  # the same seeded weights
    both.translate = True
    x = torch.rand(5, 1, 8, 8)
    up_left = torch.tensor([1, 0, 1, 2, 3, 4, 5, 6])  # row i shows row i-1, mirrored at the edge
    down_right = torch.tensor([1, 2, 3, 4, 5, 6, 7, 6])  # row i shows row i+1
    with torch.no_grad():
        plain.eval()
        both.eval()
        shifted = [x[:, :, rows][:, :, :, rows] for rows in (up_left, down_right)]
        want = plain(x) / 2 + (plain(shifted[0]) + plain(shifted[1])) / 4
        assert torch.allclose(both(x), want, atol=1e-6)
        assert not torch.allclose(both(x), plain(x), atol=1e-4)
        passes = []
        hook = both.net.register_forward_hook(lambda *_: passes.append(1))
        both(x)
        hook.remove()
        assert len(passes) == 6  # three positions, each with its mirror
    both.train()
    calls = _count_forwards(both.net)
    both(x)
    assert len(calls) == 1


@pytest.mark.parametrize("translate", [False, True])
def test_onnx_export_with_tta_matches_pytorch(tmp_path, translate):
    torch.manual_seed(0)
    shape = DataShape(3, 16, 16, 4)
    model = Classifier(models.build_for("resnet", ARCH, shape), [0.4, 0.5, 0.6],
                       [0.2, 0.25, 0.3], tta=True, translate=translate)
    model.train()
    for _ in range(3):  # move BatchNorm statistics away from their defaults
        model(torch.rand(16, 3, 16, 16))
    model.eval()
    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    info = export_onnx(model, tmp_path / "m.onnx", images, {}, 1)
    assert info.parity_max_abs_diff <= 1e-3
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    inputs = to_input(images[:7])
    got = session.run(["logits"], {"input": inputs})[0]
    with torch.no_grad():
        tensor = torch.from_numpy(inputs)
        want = model(tensor).numpy()
        model.tta = model.translate = False
        single = model(tensor).numpy()
    assert np.abs(got - want).max() <= 1e-3 and np.abs(got - single).max() > 1e-3


def _config(**recipe):
    return TrialConfig(family="resnet", arch=ARCH, recipe=BASE.model_copy(update=recipe),
                       params=models.count_for("resnet", ARCH, SHAPE))


def test_make_model_takes_dropout_and_flips_only_where_training_flips():
    model = make_model(_config(dropout=0.3, tta=True), SHAPE, [0.3], [0.3])
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert model.tta and not model.translate
    assert not make_model(_config(tta=True, hflip=False), SHAPE, [0.3], [0.3]).tta
    assert make_model(_config(tta_translate=True), SHAPE, [0.3], [0.3]).translate
    assert "sgd onecycle" in _config().describe()
    assert _config(ema=True, tta=True, optimizer="sam").describe().endswith("ema tta")
    assert _config(alternate_flip=True, tta=True, tta_translate=True).describe().endswith(
        "alternate_flip tta tta_translate")


def test_best_so_far_exports_the_ema_weights(tmp_path):
    x, y = two_class()
    config = _config(ema=True)
    model = make_model(config, SHAPE, [0.3], [0.3])
    states = []
    train(model, BatchLoader(x, y, 32, train=True), config.recipe, stop_at=time.time() + 60,
          total_steps=10, val=BatchLoader(x, y, 64, train=False),
          report=lambda p, state: states.append(copy.deepcopy(state())))
    save_state(states[-1], tmp_path / CHECKPOINT_FILE)
    best = BestSoFar(run_dir=tmp_path / "run", shape=SHAPE, mean=[0.3], std=[0.3], images=x[:8],
                     metadata={}, threads=1)
    assert best.offer(1, config, 0.9, str(tmp_path), logging.getLogger("test"))
    session = ort.InferenceSession(str(tmp_path / "run" / MODEL),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": to_input(x[:8])})[0]
    for key, close in (("ema", True), ("model", False)):
        reference = make_model(config, SHAPE, [0.3], [0.3])
        reference.load_state_dict(states[-1][key])
        with torch.no_grad():
            want = reference.eval()(torch.from_numpy(to_input(x[:8]))).numpy()
        assert np.allclose(got, want, atol=1e-4) == close


# --- the space file


def test_default_space_samples_valid_recipes():
    space = SearchSpace.load(preset("search_spaces", "default"))
    assert {"optimizer", "schedule", "dropout", "ema", "tta"} <= set(space.training)
    rng = np.random.default_rng(0)
    recipes = [space.sample(rng, DataShape(3, 32, 32, 10), 2_000_000).recipe for _ in range(30)]
    assert all(r.optimizer in optim.OPTIMIZERS and r.schedule in optim.SCHEDULES
               for r in recipes)


def test_old_recipes_and_journal_configs_still_validate():
    old = {"batch_size": 64, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1,
           "hflip": True, "cutout": 0.25, "momentum": 0.9}
    recipe = Recipe.model_validate(old)
    assert (recipe.optimizer, recipe.schedule, recipe.dropout, recipe.ema, recipe.tta) == (
        "sgd", "onecycle", 0.0, False, False)  # what autofit did before the knobs existed
    config = TrialConfig.model_validate(json.loads(json.dumps(
        {"family": "resnet", "arch": ARCH, "recipe": old, "params": 1})))
    assert config.recipe == recipe


HEAD = ("families: {resnet: {depth: {choices: [8]}, width: {choices: [8]}}}\n"
        "training: {batch_size: {choices: [8]}, lr: {low: 0.1, high: 0.2}, "
        "weight_decay: {choices: [0.0]}, ")


@pytest.mark.parametrize("knob,message", [
    ("optimizer: {choices: [sgd, rmsprop]}", "training.optimizer: 'rmsprop' is not allowed"),
    ("schedule: {choices: [step]}", "training.schedule: 'step' is not allowed"),
    ("optimizer: {low: 0, high: 1}", "training.optimizer takes {choices"),
    ("ema: {low: 0, high: 1}", "training.ema takes {choices"),
    ("dropout: {low: 0.0, high: 1.5}", "training.dropout: 1.5 is not allowed"),
    ("tta: {choices: [maybe]}", "training.tta: 'maybe' is not allowed"),
    ("optimiser: {choices: [sgd]}", "unknown training knobs \\['optimiser'\\]"),
])
def test_bad_training_knobs_are_one_clear_error(tmp_path: Path, knob, message):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD + knob + "}")
    with pytest.raises(UsageError, match=message) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()


def test_int_knob_range_needs_a_step(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(HEAD.replace("batch_size: {choices: [8]}", "batch_size: {low: 8, high: 64}")
                    + "}")
    with pytest.raises(UsageError, match="training.batch_size takes integers"):
        SearchSpace.load(path)
    path.write_text(HEAD.replace("batch_size: {choices: [8]}",
                                 "batch_size: {low: 32, high: 128, step: 32}") + "}")
    assert SearchSpace.load(path).training["batch_size"].values() == [32, 64, 96, 128]


def test_precision_is_bf16_where_the_device_computes_it_natively(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.choose("cuda").bf16
    monkeypatch.setattr(precision, "amx", lambda: True)
    assert precision.choose("cpu") == (True, "bf16 autocast: this CPU has AMX tiles")
    monkeypatch.setattr(precision, "amx", lambda: False)
    assert not precision.choose("cpu").bf16 and "no AMX" in precision.choose("cpu").reason
    monkeypatch.setenv(precision.ENV, "bf16")
    assert precision.choose("cpu").bf16
    monkeypatch.setenv(precision.ENV, "fp32")
    assert not precision.choose("cuda").bf16 and precision.choose("cuda").name == "fp32"
    monkeypatch.setenv(precision.ENV, "half")
    with pytest.raises(UsageError, match="AUTOFIT_PRECISION='half'.*auto, bf16, fp32"):
        precision.choose("cpu")


@pytest.mark.parametrize("wanted", ["bf16", "fp32"])
def test_training_runs_at_the_chosen_precision_and_evaluation_in_float32(monkeypatch, wanted):
    """The first conv's output dtype, seen by a hook, in training steps and in evaluation."""
    monkeypatch.setenv(precision.ENV, wanted)
    model = _model()
    seen: list[torch.dtype] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x, y = two_class(64)
    final = train(model, BatchLoader(x, y, 32, train=True), BASE, stop_at=time.time() + 60,
                  total_steps=4)
    assert final.state == "completed" and math.isfinite(final.loss)
    assert set(seen) == {torch.bfloat16 if wanted == "bf16" else torch.float32}
    seen.clear()
    evaluate(model, BatchLoader(x, y, 32, train=False))
    assert set(seen) == {torch.float32}


def test_orthogonalized_pushes_singular_values_towards_one_for_wide_and_tall():
    """Singular values spread 30x (a gradient's) come out within 0.6-1.3: three steps of
    Jordan's quintic, which trades exactness for speed."""
    torch.manual_seed(0)
    for rows, cols in ((16, 72), (72, 16)):
        k = min(rows, cols)
        left, right = (torch.linalg.qr(torch.randn(n, k))[0] for n in (rows, cols))
        g = left @ torch.diag(torch.logspace(-1.5, 0, k)) @ right.T
        for dtype in (torch.float32, torch.bfloat16):
            out = optim.orthogonalized(g, dtype=dtype)
            values = torch.linalg.svdvals(out)
            assert out.dtype == g.dtype and values.shape == (k,)
            assert values.min() > 0.6 and values.max() < 1.3, (dtype, values)


def test_muon_steps_filters_orthogonally_at_a_fixed_norm_and_the_rest_by_sgd():
    """Filters: norm sqrt(out channels) after a step, no decay, MUON_FILTER_SCALE of the rate;
    every other parameter: SGD-Nesterov at MUON_LR_FACTOR of the knob, biases undecayed."""
    x, y = two_class()
    recipe = BASE.model_copy(update={"optimizer": "muon"})
    model, plain = _model(), _model()
    opt = optim.build(model, recipe)
    filters = [g for g in opt.param_groups if g["muon"]]
    rest = [g for g in opt.param_groups if not g["muon"]]
    assert filters and all(p.ndim == 4 for g in filters for p in g["params"])
    assert all(p.ndim != 4 for g in rest for p in g["params"])
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters()}
    assert optim.peak_lr(recipe) == pytest.approx(BASE.lr * optim.MUON_LR_FACTOR)
    assert all(g["weight_decay"] == 0.0 and g["lr_scale"] == optim.MUON_FILTER_SCALE
               and g["momentum"] == optim.MUON_MOMENTUM for g in filters)
    rest = [p for p in plain.parameters() if p.ndim != 4]
    sgd = torch.optim.SGD([{"params": [p for p in rest if p.ndim > 1]},
                           {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0}],
                          lr=optim.peak_lr(recipe), momentum=BASE.momentum, nesterov=True,
                          weight_decay=BASE.weight_decay)
    _one_step(model, opt, x, y, None)
    _one_step(plain, sgd, x, y, None)
    mine, theirs = dict(model.named_parameters()), dict(plain.named_parameters())
    for name, p in mine.items():
        if p.ndim == 4:
            assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=0.1), name
            assert not torch.allclose(p, theirs[name])
        else:  # the same SGD step as torch's, at Muon's share of the rate
            assert torch.allclose(p, theirs[name], atol=1e-6), name


def test_muon_resumes_from_its_checkpoint_as_if_never_stopped():
    x, y = two_class(32)  # one batch, the same at every step: only the state can differ
    recipe = BASE.model_copy(update={"optimizer": "muon"})
    states = []
    whole, resumed = _model(), _model()
    train(whole, BatchLoader(x, y, 32, train=False), recipe, stop_at=time.time() + 60,
          total_steps=20, save=lambda state: states.append(copy.deepcopy(state)),
          save_every_s=0.0)
    final = train(resumed, BatchLoader(x, y, 32, train=False), recipe,
                  stop_at=time.time() + 60, total_steps=20, resume=states[9])
    assert final.steps == 20
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
