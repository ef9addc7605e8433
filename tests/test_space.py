from pathlib import Path

import numpy as np
import pytest

from autofit import models
from autofit.budget import ComputeCap, Cost
from autofit.config import Recipe
from autofit.errors import BudgetError, UsageError
from autofit.models import DataShape
from autofit.presets import preset
from autofit.search.space import SearchSpace

CIFAR = DataShape(3, 32, 32, 10)


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.load(preset("search_spaces", "default"))


def test_default_space_loads(space):
    assert {"fastnet", "resnet"} <= set(space.families) and space.fill is not None
    assert {"batch_size", "lr", "weight_decay"} <= set(space.training)
    assert space.families["resnet"]["width"].values()[:3] == [8, 12, 16]


@pytest.mark.parametrize("cap", [30_000, 200_000, 2_000_000])
def test_every_sample_fits_the_cap_exactly(space, cap):
    rng = np.random.default_rng(0)
    for _ in range(40):
        config = space.sample(rng, CIFAR, cap)
        assert config.params <= cap
        assert config.params == models.count_for(config.family, config.arch, CIFAR)


def test_fit_shrinks_width_before_depth(space):
    arch, params = space.fit("resnet", {"depth": 32, "width": 64}, CIFAR, 500_000)
    assert arch["depth"] == 32 and arch["width"] < 64 and params <= 500_000
    wider = models.count_for("resnet", {"depth": 32, "width": arch["width"] + 8}, CIFAR)
    assert wider > 500_000


def test_sampling_is_seeded(space):
    a = [space.sample(np.random.default_rng(7), CIFAR, 2_000_000) for _ in range(3)]
    b = [space.sample(np.random.default_rng(7), CIFAR, 2_000_000) for _ in range(3)]
    assert a == b


def test_cap_below_smallest_model_names_it(space):
    family, arch, smallest = space.smallest(CIFAR)
    assert smallest == min(models.count_for(f, {k: int(min(v.values())) for k, v in knobs.items()},
                                            CIFAR) for f, knobs in space.families.items())
    with pytest.raises(BudgetError, match=f"{smallest:,} parameters"):
        space.check_fits(CIFAR, smallest - 1)
    space.check_fits(CIFAR, smallest)


@pytest.mark.parametrize("body,message", [
    ("families: {vgg: {depth: {choices: [1]}}}\ntraining: {}", "unknown family 'vgg'"),
    ("families: {resnet: {depth: {choices: [8]}}}\n"
     "training: {batch_size: {choices: [8]}, lr: {low: 0.1, high: 0.2}, "
     "weight_decay: {choices: [0.0]}}", "takes knobs"),
    ("families: {resnet: {depth: {choices: [8]}, width: {low: 8, high: 16}}}\n"
     "training: {batch_size: {choices: [8]}, lr: {low: 0.1, high: 0.2}, "
     "weight_decay: {choices: [0.0]}}", "must be discrete"),
    ("families: {resnet: {depth: {choices: [8]}, width: {choices: [8]}}}\n"
     "training: {batch_size: {choices: [8]}}", "training must set"),
    ("families: {resnet: {depth: {choices: [8]}, width: {choices: [8]}}}\n"
     "training: {batch_size: {choices: [8]}, lr: {low: 0.3, high: 0.2}, "
     "weight_decay: {choices: [0.0]}}", "must not exceed"),
    ("families: [", "cannot read"),
])
def test_bad_space_files_are_one_clear_error(tmp_path: Path, body, message):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(UsageError, match=message) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()


def test_the_first_trial_is_the_spaces_prior_fitted_to_both_caps(space):
    first = space.first_config(CIFAR, 2_000_000)
    assert first is not None and first.family == space.first.family == "fastnet"
    assert first.recipe.model_dump() == Recipe(**space.first.training).model_dump()
    assert first.recipe.lr == 0.4 and first.recipe.tta and first.recipe.tta_translate
    assert first.arch["depth"] == 2
    assert 1_000_000 <= first.params <= 2_000_000  # the width filled the parameter cap
    small = space.first_config(CIFAR, 60_000)
    assert small is not None and small.params <= 60_000 < first.params
    cap = ComputeCap(cost=Cost(s_per_mac=2e-11, s_per_act=4e-9, reference_s=1e-3),
                     max_image_s=1e-3)
    capped = space.first_config(CIFAR, 2_000_000, cap)
    assert capped is not None and cap.allows(models.count_work("fastnet", capped.arch, CIFAR))
    assert capped.arch["width"] < first.arch["width"]
    assert SearchSpace.load(preset("search_spaces", "fastnet")).first_config(CIFAR, 10**6) \
        is None  # a space without a prior starts with a draw


@pytest.mark.parametrize("first,message", [
    ("{family: wrn, training: {lr: 0.1}}", "first.family 'wrn' is not a family"),
    ("{family: resnet, arch: {depth: 8}, training: {batch_size: 32, lr: 0.1}}",
     "missing: \\['weight_decay'\\]"),
    ("{family: resnet, arch: {depth: 9}, training: {batch_size: 32, lr: 0.1, weight_decay: 0.0}}",
     "first.arch.depth: 9 is outside"),
    ("{family: resnet, arch: {depth: 8}, training: {batch_size: 32, lr: 5.0, weight_decay: 0.0}}",
     "first.training.lr: 5.0 is outside"),
    ("{family: resnet, arch: {depth: 8, size: 3}, "
     "training: {batch_size: 32, lr: 0.1, weight_decay: 0.0}}",
     "unknown: \\['size'\\]"),
])
def test_a_bad_first_is_one_clear_error(tmp_path: Path, first: str, message: str):
    path = tmp_path / "space.yaml"
    path.write_text("families: {resnet: {depth: {choices: [8, 14]}, width: {low: 8, high: 16, "
                    "step: 8}}}\nfill: {knob: width}\ntraining: {batch_size: {choices: [32]}, "
                    "lr: {low: 0.01, high: 0.4}, "
                    f"weight_decay: {{choices: [0.0]}}}}\nfirst: {first}\n")
    with pytest.raises(UsageError, match=message) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()
