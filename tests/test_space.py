from pathlib import Path

import numpy as np
import pytest

from autofit import models
from autofit.errors import BudgetError, UsageError
from autofit.models import DataShape
from autofit.presets import preset
from autofit.space import SearchSpace

CIFAR = DataShape(3, 32, 32, 10)


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.load(preset("search_spaces", "default"))


def test_default_space_loads(space):
    assert "resnet" in space.families
    assert {"batch_size", "lr", "weight_decay"} <= set(space.training)
    assert space.families["resnet"]["width"].values()[:3] == [8, 16, 24]


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
    smallest = models.count_for("resnet", {"depth": 8, "width": 8}, CIFAR)
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
