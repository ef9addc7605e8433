"""The training side of large images, decided from the data by a short A/B (search/resolution.py):
a model that averages its input down by `shrink` inside itself, so the data and the exported
model keep the loaded side, and the decision that pins it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import blocks, made_dataset

from autofit import models
from autofit.budget import Cost
from autofit.data.dataset import Dataset
from autofit.deliver.export import export_onnx
from autofit.models import Classifier, DataShape
from autofit.search import decided, frontier, resolution
from autofit.search.space import SearchSpace

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "default.yaml"
PHOTO = DataShape(3, 96, 128, 10)


def _stripes(n: int = 1200, side: int = 128) -> Dataset:
    """Vertical or horizontal one-pixel stripes, at random phase, under noise: the label is
    in detail a 2x2 average erases (both classes average to the same flat grey)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    grid = np.arange(side)
    x = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        lines = (grid + rng.integers(0, 2)) % 2 * 120
        image = np.broadcast_to(lines[None, :] if y[i] else lines[:, None], (side, side))
        noise = rng.integers(0, 60, (side, side))
        x[i] = (image + noise)[..., None].astype(np.uint8)
    return made_dataset(x, y)


def test_a_shrunk_model_averages_its_input_inside_itself_and_exports_at_the_loaded_side(
        tmp_path: Path):
    arch = {"width": 16, "depth": 2, "whiten": 2}
    full, half = (models.count_work("fastnet", {**arch, models.SHRINK: s}, PHOTO) for s in (1, 2))
    assert models.count_for("fastnet", {**arch, models.SHRINK: 2}, PHOTO) == \
        models.count_for("fastnet", arch, PHOTO)  # an average pool has no weights
    assert half[1] < 0.7 * full[1]  # the stem's activations at half side
    torch.manual_seed(0)
    net = models.build_for("fastnet", {**arch, models.SHRINK: 2}, PHOTO).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(net(x), net.net(torch.nn.functional.avg_pool2d(x, 2)))
    model = Classifier(net, [0.5] * 3, [0.25] * 3)
    images = np.random.default_rng(0).integers(0, 255, (8, 96, 128, 3), dtype=np.uint8)
    info = export_onnx(model, tmp_path / "m.onnx", images, {}, threads=2)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.get_inputs()[0].shape[1:] == [3, 96, 128]  # the loaded side
    assert info.parity_max_abs_diff < 1e-3


def test_detail_that_carries_the_label_keeps_the_loaded_side():
    data = _stripes()
    decision = resolution.decide(data, SearchSpace.load(SPACE), 200.0, "cpu", 2, seed=0)
    assert decision.name == "resolution" and decision.pinned == {}, decision.evidence
    measured = decision.measured
    assert measured["full_accuracy"] > 0.9 and measured["half_accuracy"] < 0.7, measured
    assert decision.evidence.startswith("images train at their loaded 128x128: fastnet width 16")
    assert decision.evidence.endswith("the full side's detail wins by more than the error")


def test_labels_a_half_side_keeps_train_at_half_side_in_every_model_of_the_space():
    data = blocks()
    space = SearchSpace.load(SPACE)
    decision = resolution.decide(data, space, 200.0, "cpu", 2, seed=0)
    assert decision.pinned == {models.SHRINK: 2}, decision.evidence
    measured = decision.measured
    assert measured["full_accuracy"] - measured["half_accuracy"] <= measured["standard_error"]
    assert measured["half_ms"] < measured["full_ms"]  # the cheaper stem
    assert measured["steps"] > 0  # the same steps, so the same images, at each side
    assert "images train at half side, 64x64 (averaged 2x2 in the model" in decision.evidence
    halved = decided.pinned(space, [decision])
    assert decided.shrink(halved) == 2 and decided.shrink(space) == 1
    assert all(knobs[models.SHRINK].values() == [2] for knobs in halved.families.values())
    prior = halved.first_config(data.shape, 2_000_000)
    assert prior is not None and prior.arch[models.SHRINK] == 2
    cost = Cost(s_per_mac=1e-12, s_per_act=1e-9, reference_s=1e-3)  # activation-bound
    widths = [frontier.size(frontier.load(), cost, PHOTO, 3000, 60.0, 2_000_000, shrink=s).width
              for s in (1, 2)]
    assert widths[1] >= widths[0]  # a cheaper image: as wide or wider for the same seconds


@pytest.mark.parametrize(("side", "budget_s", "says"), [
    (96, 600.0, "images 96x96 train as loaded (at most 96 a side, halving would save nothing"),
    (128, 60.0, "resolution not judged: 3% of the budget is 1.8s, under the 3s a side needs"),
])
def test_small_images_or_a_short_budget_decide_nothing(side: int, budget_s: float, says: str):
    data = blocks(n=64, side=side)
    decision = resolution.decide(data, SearchSpace.load(SPACE), budget_s, "cpu", 2, seed=0)
    assert decision.pinned == {} and decision.evidence.startswith(says), decision.evidence
