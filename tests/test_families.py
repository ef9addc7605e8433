"""Every model family: any input size and channel count, exact counts, faithful ONNX export, and
search-space files whose fill sampling spends the parameter budget without ever exceeding it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from autofit import models
from autofit.deliver.export import export_onnx
from autofit.errors import UsageError
from autofit.models import Classifier, DataShape
from autofit.models.pyramidnet import ShakeDrop
from autofit.presets import preset, summary_line
from autofit.search.space import SearchSpace

SHAPES = [DataShape(1, 8, 8, 10), DataShape(1, 28, 28, 10), DataShape(3, 32, 32, 10),
          DataShape(1, 90, 90, 52), DataShape(3, 128, 128, 5)]
SMALL = {  # a quick point of each family, for forward passes and exports
    "resnet": {"depth": 8, "width": 8},
    "wrn": {"depth": 10, "widen": 1},
    "pyramidnet": {"depth": 8, "alpha": 12, "shakedrop": 1},
    "fastnet": {"width": 8, "depth": 2},
}
FAMILIES = list(SMALL)
NEW = ["wrn", "pyramidnet", "fastnet"]  # tests/test_export.py exports resnet already
FILL_KNOB = {"resnet": "width", "wrn": "widen", "pyramidnet": "alpha", "fastnet": "width"}
LARGEST_AT_LEAST = {"resnet": 5e6, "wrn": 5e6, "pyramidnet": 5e6, "fastnet": 1.5e6}
TRAINING = ("training: {batch_size: {choices: [8]}, lr: {choices: [0.1]}, "
            "weight_decay: {choices: [0.0]}}")


def shape_id(shape: DataShape) -> str:
    return f"{shape.channels}x{shape.height}x{shape.width}-{shape.num_classes}"


def space_of(family: str) -> SearchSpace:
    return SearchSpace.load(preset("search_spaces", family))


def real_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_knobs():
    shrink = models.SHRINK  # every from-scratch family's (search/resolution.py), never required
    assert models.knobs("resnet") == {"depth", "width", shrink}
    assert models.knobs("wrn") == {"depth", "widen", shrink}
    assert models.knobs("pyramidnet") == {"depth", "alpha", "shakedrop", shrink}
    assert models.knobs("fastnet") == {"width", "depth", "whiten", shrink}
    assert models.required_knobs("fastnet") == {"width", "depth"}  # whiten defaults to off
    assert models.knobs("pretrained") == {"net", "resolution"}  # resizes to its own side


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_builds_runs_and_counts_exactly(family, shape):
    model = models.build_for(family, SMALL[family], shape).eval()
    with torch.no_grad():
        out = model(torch.rand(3, shape.channels, shape.height, shape.width))
    assert out.shape == (3, shape.num_classes) and torch.isfinite(out).all()
    assert models.count_for(family, SMALL[family], shape) == real_count(model)


@pytest.mark.parametrize("family,arch,low,high", [
    ("wrn", {"depth": 16, "widen": 4}, 2.6e6, 2.9e6),  # WRN-16-4: 2.7M in the paper
    ("pyramidnet", {"depth": 110, "alpha": 48, "shakedrop": 0}, 1.6e6, 1.9e6),  # 1.7M
    ("fastnet", {"width": 64, "depth": 2}, 1.9e6, 2.1e6),  # airbench94's widths: ~2M
    ("resnet", {"depth": 20, "width": 16}, 0.26e6, 0.28e6),  # ResNet-20: 0.27M
])
def test_reference_points_have_their_published_size(family, arch, low, high):
    shape = DataShape(3, 32, 32, 10)
    count = models.count_for(family, arch, shape)
    assert low < count < high
    assert count == real_count(models.build_for(family, arch, shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_space_file_extremes_are_sensible(family):
    space = space_of(family)
    assert summary_line(preset("search_spaces", family))  # what `autofit spaces` prints
    knobs = space.families[family]
    smallest = {name: int(min(knob.values())) for name, knob in knobs.items()}
    largest = {name: int(max(knob.values())) for name, knob in knobs.items()}
    for shape in SHAPES:
        assert models.count_for(family, smallest, shape) < 100_000  # a 100k cap can be met
        assert LARGEST_AT_LEAST[family] < models.count_for(family, largest, shape) < 100e6


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_is_not_a_knob_and_changes_no_weights(family):
    shape = DataShape(3, 32, 32, 10)
    plain = models.build_for(family, SMALL[family], shape)
    dropped = models.build_for(family, SMALL[family], shape, dropout=0.3)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    assert [m.p for m in dropped.modules() if isinstance(m, torch.nn.Dropout)] == [0.3]
    assert "dropout" not in models.knobs(family)


@pytest.mark.parametrize("family,arch", [
    ("wrn", {"depth": 12, "widen": 2}), ("pyramidnet", {"depth": 10, "alpha": 8, "shakedrop": 0})
])
def test_bad_depth_is_refused(family, arch):
    with pytest.raises(ValueError, match="depth must be 6n"):
        models.build_for(family, arch, DataShape(3, 32, 32, 10))


@pytest.mark.parametrize("family", NEW)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_onnx_export_matches_pytorch(tmp_path: Path, family, shape):
    torch.manual_seed(0)
    net = models.build_for(family, SMALL[family], shape, dropout=0.2)
    model = Classifier(net, [0.5] * shape.channels, [0.25] * shape.channels).train()
    with torch.no_grad():
        for _ in range(2):  # move BatchNorm statistics away from their defaults
            model(torch.rand(8, shape.channels, shape.height, shape.width))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, shape.height, shape.width, shape.channels), np.uint8)
    info = export_onnx(model, tmp_path / "m.onnx", images, {}, threads=1)
    assert info.onnx_params >= real_count(model) - 2 * sum(  # BN may fold into convs
        m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


WHITENED = {"width": 8, "depth": 2, "whiten": 2}


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_a_whitened_stem_fits_on_its_first_training_batch_and_exports(tmp_path: Path, shape):
    torch.manual_seed(0)
    net = models.build_for("fastnet", WHITENED, shape)
    whiten = net.stem[0]
    assert whiten.out_channels == 2 * shape.channels * 4 and not whiten.conv.weight.requires_grad
    assert models.count_for("fastnet", WHITENED, shape) == real_count(net)  # frozen ones count
    untrained = whiten.conv.weight.clone()
    model = Classifier(net, [0.5] * shape.channels, [0.25] * shape.channels)
    with torch.no_grad():
        model.eval()(torch.rand(2, shape.channels, shape.height, shape.width))
        assert not whiten.fitted and torch.equal(whiten.conv.weight, untrained)  # eval: no fit
        model.train()(torch.rand(8, shape.channels, shape.height, shape.width))
    assert whiten.fitted and not torch.equal(whiten.conv.weight, untrained)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, shape.height, shape.width, shape.channels), np.uint8)
    export_onnx(model, tmp_path / "m.onnx", images, {}, threads=1)  # raises unless faithful


def test_whitened_filters_decorrelate_the_patches_they_were_fitted_to():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    x = x + 0.8 * x.roll(1, 3) + 0.5 * x[:, :1]  # neighbours and channels correlated
    net = models.build_for("fastnet", WHITENED, DataShape(3, 32, 32, 10)).train()
    net(x)
    half = net.stem[0].conv.weight[:12]  # the other half is its negation
    out = torch.nn.functional.conv2d(x, half).permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(out.T @ out / len(out), torch.eye(12), atol=0.01)
    assert torch.equal(net.stem[0].conv.weight[12:], -half)


def test_a_loaded_whitened_model_keeps_its_fit_and_a_fresh_one_fits_anew():
    shape = DataShape(1, 28, 28, 10)
    trained = models.build_for("fastnet", WHITENED, shape).train()
    trained(torch.rand(8, 1, 28, 28))
    loaded = models.build_for("fastnet", WHITENED, shape).train()
    loaded.load_state_dict(trained.state_dict())
    loaded(torch.rand(8, 1, 28, 28) * 5)  # other data: a refit would change the filters
    assert torch.equal(loaded.stem[0].conv.weight, trained.stem[0].conv.weight)
    fresh = models.build_for("fastnet", WHITENED, shape).train()
    fresh(torch.rand(8, 1, 28, 28) * 5)
    assert not torch.allclose(fresh.stem[0].conv.weight, trained.stem[0].conv.weight)


def test_a_space_may_leave_out_a_knob_with_a_default_but_not_one_without(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("families: {fastnet: {width: {choices: [8]}, depth: {choices: [2]}}}\n"
                    + TRAINING + "\n")
    assert set(SearchSpace.load(path).families["fastnet"]) == {"width", "depth"}
    path.write_text("families: {fastnet: {width: {choices: [8]}, whiten: {choices: [2]}}}\n"
                    + TRAINING + "\n")
    with pytest.raises(UsageError, match=r"of which \['depth', 'width'\] must be set"):
        SearchSpace.load(path)


def test_shakedrop_is_random_in_training_and_its_expectation_in_eval():
    torch.manual_seed(0)
    shake = ShakeDrop(0.5)
    x = torch.ones(256, 4, 2, 2, requires_grad=True)
    first, second = shake(x), shake(x)
    assert not torch.equal(first, second)
    assert first.min() >= -1 and first.max() <= 1 and (first < 0).any()  # alpha in [-1, 1]
    first.sum().backward()
    assert x.grad is not None and x.grad.min() >= 0 and x.grad.max() <= 1  # beta in [0, 1]
    shake.eval()
    assert torch.equal(shake(x), shake(x)) and torch.allclose(shake(x), x * 0.5)


def test_pyramidnet_with_shakedrop_is_stochastic_only_in_training():
    torch.manual_seed(0)
    shape = DataShape(3, 16, 16, 10)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        net = models.build_for("pyramidnet", {"depth": 20, "alpha": 12, "shakedrop": 1}, shape)
        assert not torch.allclose(net(x), net(x))
        plain = models.build_for("pyramidnet", {"depth": 20, "alpha": 12, "shakedrop": 0}, shape)
        assert torch.allclose(plain(x), plain(x))  # without ShakeDrop, train mode is repeatable
        net.eval()
        assert torch.equal(net(x), net(x))
    drops = [m.drop for m in net.modules() if isinstance(m, ShakeDrop)]
    assert drops[-1] == pytest.approx(0.5) and drops == sorted(drops)  # linear decay to p_L


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cap", [100_000, 600_000, 2_000_000, 5_000_000])
def test_fill_lands_near_the_cap_and_never_over(family, cap):
    space = space_of(family)
    assert space.fill is not None
    shape = DataShape(3, 32, 32, 10)
    knob = FILL_KNOB[family]
    ladder = sorted(space.families[family][knob].values())
    rng = np.random.default_rng(cap)
    for _ in range(8):
        config = space.sample(rng, shape, cap)
        assert config.params == models.count_for(family, config.arch, shape) <= cap
        if config.params < space.fill.low * cap:  # only when no value of the knob lands in it
            bigger = [v for v in ladder if v > config.arch[knob]]
            assert not bigger or models.count_for(
                family, {**config.arch, knob: bigger[0]}, shape) > cap


def test_fill_draws_its_target_in_the_range():
    space = space_of("fastnet")
    shape = DataShape(3, 32, 32, 10)
    params = [space.sample(np.random.default_rng(seed), shape, 1_000_000).params
              for seed in range(30)]
    assert all(500_000 <= p <= 1_000_000 for p in params)
    assert len(set(params)) > 3  # a spread of sizes, not always the largest that fits


def test_fill_works_in_a_space_mixing_families(tmp_path: Path):
    path = tmp_path / "mixed.yaml"
    path.write_text("families:\n"
                    "  wrn: {depth: {choices: [16]}, widen: {low: 1, high: 8, step: 1}}\n"
                    "  fastnet: {width: {low: 8, high: 64, step: 4}, depth: {choices: [2]}}\n"
                    f"fill: {{knob: [widen, width], low: 0.5}}\nfit_order: [depth]\n{TRAINING}\n")
    space = SearchSpace.load(path)
    rng = np.random.default_rng(0)
    shape = DataShape(3, 32, 32, 10)
    seen = {space.sample(rng, shape, 1_500_000).family for _ in range(10)}
    assert seen == {"wrn", "fastnet"}


@pytest.mark.parametrize("fill,message", [
    ("{knob: wdth}", "fill: knob 'wdth' is not a knob of any family"),
    ("{knob: [width, depth]}", "fill: knob must name exactly one knob of family 'fastnet'"),
    ("{knob: width, low: 0}", "fill.low: Input should be greater than 0"),
    ("{knob: width, low: 1.5}", "fill.low: Input should be less than or equal to 1"),
    ("{knob: width, high: 2}", "fill.high: Extra inputs are not permitted"),
])
def test_bad_fill_is_one_clear_usage_error(tmp_path: Path, fill, message):
    path = tmp_path / "space.yaml"
    path.write_text("families: {fastnet: {width: {choices: [8]}, depth: {choices: [2]}}}\n"
                    f"fill: {fill}\n{TRAINING}\n")
    with pytest.raises(UsageError, match=message) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()
