import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autofit import models
from autofit.deliver import export
from autofit.deliver.export import export_onnx, to_input
from autofit.errors import AutofitError, ExportError
from autofit.models import Classifier, DataShape


@pytest.fixture
def model():
    torch.manual_seed(0)
    shape = DataShape(3, 16, 16, 4)
    net = models.build_for("resnet", {"depth": 8, "width": 8}, shape)
    model = Classifier(net, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    model.train()
    for _ in range(3):  # move BatchNorm statistics away from their defaults
        model(torch.rand(16, 3, 16, 16))
    return model.eval()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)


def test_export_is_self_contained_verified_and_described(tmp_path: Path, model, images):
    path = tmp_path / "m.onnx"
    info = export_onnx(model, path, images, {"classes": ["a", "b", "c", "d"], "note": "x"}, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no sidecar, no temp
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["a", "b", "c", "d"] and meta["note"] == "x"
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert 0 < info.onnx_params <= sum(p.numel() for p in model.parameters())
    assert info.parity_max_abs_diff <= 1e-3 and info.parity_images == 40
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # dynamic batch axis
        x = to_input(images[:n])
        got = session.run(["logits"], {"input": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 4) and np.abs(got - want).max() <= 1e-3


def test_failed_parity_fails_loudly_and_keeps_nothing(tmp_path: Path, model, images,
                                                      monkeypatch):
    monkeypatch.setattr(export, "PARITY_ATOL", -1.0)  # fault injection: no diff can pass
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "m.onnx", images, {}, 1)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_is_a_clear_error(tmp_path: Path, model, images):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AutofitError, match="cannot write .*file/m.onnx"):
        export_onnx(model, blocker / "m.onnx", images, {}, 1)
