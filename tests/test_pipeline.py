import numpy as np
import pytest
import torch

from autofit.data.pipeline import BatchLoader
from autofit.data.torch_data import TorchBatchLoader


def _images(n=64, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % 4


@pytest.mark.parametrize("make", [BatchLoader, TorchBatchLoader])
def test_eval_batches_are_exact_and_ordered(make):
    x, y = _images(50)
    loader = make(x, y, 16, train=False)
    xs, ys = zip(*loader, strict=True)
    assert len(loader) == 4 and [len(b) for b in ys] == [16, 16, 16, 2]
    want = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(torch.cat(xs), want, atol=1e-6, rtol=0)  # x/255 up to float rounding
    assert torch.equal(torch.cat(ys), torch.from_numpy(y))
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in xs)


def test_train_batches_augment_shuffle_and_keep_labels():
    x, _ = _images(64)
    y = np.arange(64)  # label = index, to find each image's source
    loader = BatchLoader(x, y, 16, train=True, seed=1)
    seen, changed = [], 0
    for xb, yb in loader:
        assert xb.shape == (16, 3, 16, 16) and xb.dtype == torch.float32
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
        for img, label in zip(xb, yb, strict=True):
            src = torch.from_numpy(x[int(label)]).permute(2, 0, 1).float() / 255
            changed += not torch.allclose(img, src, atol=1e-6)
        seen += yb.tolist()
    assert sorted(seen) == list(range(64)) and seen != list(range(64))
    assert changed > 32  # random crops and flips move most images


def test_augmented_pixels_come_from_the_source_image():
    x, _ = _images(8, size=12)
    loader = BatchLoader(x, np.arange(8), 8, train=True, hflip=False, seed=0)
    xb, yb = next(iter(loader))
    for img, label in zip(xb, yb, strict=True):
        src = x[int(label)].transpose(2, 0, 1)
        pixels = (img[img > 0] * 255).round().to(torch.uint8)
        assert torch.isin(pixels, torch.from_numpy(src)).all()  # a shifted copy, zero-padded


def test_training_order_and_augmentation_are_seeded():
    x, _ = _images(32)
    y = np.arange(32)

    def epoch(seed):
        batches = list(BatchLoader(x, y, 8, train=True, seed=seed))
        return torch.cat([b for b, _ in batches]), [y.tolist() for _, y in batches]

    (first, order), (again, order_again) = epoch(5), epoch(5)
    assert order == order_again and torch.equal(first, again)
    assert order != epoch(6)[1]
