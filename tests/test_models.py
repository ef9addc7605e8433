import pytest
import torch

from autofit import models
from autofit.models import Classifier, DataShape


@pytest.mark.parametrize("depth,width", [(8, 8), (14, 16), (20, 24), (32, 40)])
@pytest.mark.parametrize("shape", [DataShape(1, 8, 8, 10), DataShape(3, 32, 32, 10),
                                   DataShape(1, 90, 90, 52)])
def test_meta_count_is_exact(depth, width, shape):
    arch = {"depth": depth, "width": width}
    model = models.build_for("resnet", arch, shape)
    assert models.count_for("resnet", arch, shape) == sum(p.numel() for p in model.parameters())


def test_resnet20_is_the_paper_size():
    # He et al. report 0.27M parameters for ResNet-20 on CIFAR-10.
    count = models.count_for("resnet", {"depth": 20, "width": 16}, DataShape(3, 32, 32, 10))
    assert 0.26e6 < count < 0.28e6


@pytest.mark.parametrize("shape", [DataShape(1, 8, 8, 10), DataShape(3, 32, 32, 10),
                                   DataShape(1, 90, 90, 52), DataShape(3, 28, 40, 5)])
def test_any_input_size_and_channels(shape):
    net = models.build_for("resnet", {"depth": 8, "width": 8}, shape)
    model = Classifier(net, [0.5] * shape.channels, [0.2] * shape.channels).eval()
    out = model(torch.rand(2, shape.channels, shape.height, shape.width))
    assert out.shape == (2, shape.num_classes)


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.build_for("resnet", {"depth": 10, "width": 8}, DataShape(3, 32, 32, 10))

