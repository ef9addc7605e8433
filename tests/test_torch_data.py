"""The DALI-free data path: PIL decode and torch augmentation (autofit.data.torch_data)."""

import numpy as np
import pytest
import torch
from PIL import Image

from autofit.data.torch_data import TorchBatchLoader, decode
from autofit.errors import DataError


def _images(n=64, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % 4


def _write(tmp_path, arrays, suffix):
    paths = []
    for i, arr in enumerate(arrays):
        path = tmp_path / f"{i:03d}{suffix}"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


# -- decode -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_decode_formats_in_file_order(tmp_path, suffix):
    x, _ = _images(6, size=12)
    out, _ = decode(_write(tmp_path, x, suffix), 12, 12, 3, threads=2)
    assert out.shape == (6, 12, 12, 3) and out.dtype == np.uint8
    if suffix != ".jpg":  # lossless formats come back exactly
        assert np.array_equal(out, x)
    # each output is nearer its own source than any other: the order is kept
    dist = np.abs(out[:, None].astype(int) - x[None].astype(int)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(6)).all()


def test_decode_png_matches_pil_exactly(tmp_path):
    x, _ = _images(5, size=10)
    paths = _write(tmp_path, x, ".png")
    want = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert np.array_equal(decode(paths, 10, 10, 3, threads=3)[0], want)


def test_greyscale_stays_one_channel_and_rgb_is_converted(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    paths = _write(tmp_path, grey, ".png")
    out, _ = decode(paths, 8, 8, 1, threads=1)
    assert out.shape == (3, 8, 8, 1) and np.array_equal(out[..., 0], grey)
    rgb, _ = decode(paths, 8, 8, 3, threads=1)  # grey files asked for as RGB: three equal planes
    assert rgb.shape == (3, 8, 8, 3) and all(np.array_equal(rgb[..., c], grey) for c in range(3))


def test_mixed_sizes_are_resized_to_the_target(tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(8, 8), (20, 30),
                                                                          (5, 7)]]
    paths = _write(tmp_path, arrays, ".png")
    out, _ = decode(paths, 8, 8, 3, threads=2)
    assert out.shape == (3, 8, 8, 3)
    assert np.array_equal(out[0], arrays[0])  # already the right size: untouched
    want = np.asarray(Image.fromarray(arrays[1]).resize((8, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(out[1], want)


def test_corrupt_file_raises_data_error_naming_it(tmp_path):
    x, _ = _images(4, size=8)
    paths = _write(tmp_path, x, ".png")
    bad_path = tmp_path / "broken file.png"
    bad_path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    paths.insert(2, str(bad_path))
    with pytest.raises(DataError, match="cannot decode image .*broken file.png: ") as info:
        decode(paths, 8, 8, 3, threads=2)
    assert "\n" not in str(info.value)
    out, bad = decode(paths, 8, 8, 3, threads=2, max_bad=1)  # allowed one: left out, listed
    assert np.array_equal(out, x) and [f for f, _ in bad] == [str(bad_path)]


# -- loader -------------------------------------------------------------------------------

def _padded(src, pad):
    """C x H x W float source with `pad` zeros around."""
    img = torch.from_numpy(src).permute(2, 0, 1).float() / 255
    return torch.nn.functional.pad(img, (pad, pad, pad, pad))


def _placements(img, src, pad, flips=(False, True), ignore=None):
    """The (dy, dx, flip) crops of the zero-padded source equal to `img` (outside `ignore`)."""
    padded, (_, h, w) = _padded(src, pad), img.shape
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for flip in flips:
                crop = padded[:, dy:dy + h, dx:dx + w]
                crop = crop.flip(2) if flip else crop
                same = torch.isclose(crop, img, atol=1e-6, rtol=0).all(0)
                if (same | ignore).all() if ignore is not None else same.all():
                    found.append((dy - pad, dx - pad, flip))
    return found


def test_train_batches_shuffle_augment_and_keep_labels():
    x, _ = _images(70)
    loader = TorchBatchLoader(x, np.arange(70), 16, train=True, seed=1)
    assert len(loader) == 4  # the last partial batch is dropped
    seen, changed = [], 0
    for xb, yb in loader:
        assert xb.shape == (16, 3, 16, 16) and xb.dtype == torch.float32
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
        for img, label in zip(xb, yb, strict=True):
            src = torch.from_numpy(x[int(label)]).permute(2, 0, 1).float() / 255
            changed += not torch.equal(img, src)
        seen += yb.tolist()
    assert len(set(seen)) == 64 and seen != sorted(seen)
    assert changed > 40
    assert TorchBatchLoader(x[:5], np.arange(5), 16, train=True).batch_size == 5


def test_augmented_images_are_crops_and_flips_of_the_padded_source():
    x, _ = _images(16, size=12)
    loader = TorchBatchLoader(x, np.arange(16), 16, train=True, seed=3)
    xb, yb = next(iter(loader))
    offsets, flips = set(), set()
    for img, label in zip(xb, yb, strict=True):
        found = _placements(img, x[int(label)], pad=2)  # pad = round(12 / 8)
        assert found, f"image {int(label)} is no crop of its source"
        offsets |= {(dy, dx) for dy, dx, _ in found}
        flips |= {f for *_, f in found}
    assert len(offsets) > 3 and flips == {False, True}


def test_cutout_zeroes_a_square_and_the_rest_is_a_crop():
    x, _ = _images(32, size=16)
    x = np.maximum(x, 1)  # no zero pixels of its own: zeros are padding or cutout
    loader = TorchBatchLoader(x, np.arange(32), 32, train=True, cutout=0.25, seed=4)
    assert loader.cut == 4
    xb, yb = next(iter(loader))
    full = 0
    for img, label in zip(xb, yb, strict=True):
        zero = (img == 0).all(0)
        found = [(dy, dx, f) for dy, dx, f in _placements(img, x[int(label)], 2, ignore=zero)]
        assert found, f"image {int(label)} is no crop of its source outside the cutout"
        padded = (_padded(x[int(label)], 2) == 0).all(0)
        ok = False
        for dy, dx, flip in found:  # what is zero beyond the padding is the clipped square
            pad_zero = padded[dy + 2:dy + 18, dx + 2:dx + 18]
            pad_zero = pad_zero.flip(1) if flip else pad_zero
            cut = zero & ~pad_zero
            rows, cols = cut.any(1).nonzero(), cut.any(0).nonzero()
            if not len(rows):  # the square fell in the padding: nothing to see
                ok = True
                continue
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            box = cut[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            ok |= h <= 4 and w <= 4 and bool(box.all())
            full += h == 4 and w == 4
        assert ok
    assert full > 5  # squares away from the border are the full 4 x 4


def test_augmentation_is_seeded():
    x, _ = _images(32)
    y = np.arange(32)

    def epochs(seed):
        loader = TorchBatchLoader(x, y, 8, train=True, cutout=0.3, seed=seed)
        return [torch.cat([b for b, _ in loader]) for _ in range(2)]

    (first, second), (again, second_again) = epochs(5), epochs(5)
    assert torch.equal(first, again) and torch.equal(second, second_again)
    assert not torch.equal(first, second)  # each epoch draws anew
    assert not torch.equal(first, epochs(6)[0])
    same = np.repeat(x[:1], 32, axis=0)  # the shuffle cannot show: only augmentation differs
    one = [next(iter(TorchBatchLoader(same, y, 32, train=True, seed=s)))[0] for s in (1, 1, 2)]
    assert torch.equal(one[0], one[1]) and not torch.equal(one[0], one[2])


def test_rebatched_keeps_the_options():
    x, y = _images(40)
    loader = TorchBatchLoader(x, y, 16, train=True, hflip=False, cutout=0.5, seed=7)
    smaller = loader.rebatched(8)
    assert smaller.batch_size == 8 and len(smaller) == 5 and smaller.train
    assert smaller._options == loader._options and smaller.cut == loader.cut
    assert not smaller.hflip
    assert torch.equal(next(iter(smaller))[0], next(iter(loader.rebatched(8)))[0])


def test_mismatched_lengths_raise():
    x, _ = _images(8)
    with pytest.raises(ValueError, match="differ in length"):
        TorchBatchLoader(x, np.arange(7), 4, train=True)


def _offsets(loader, x, pad):
    """The crop offsets (no flips) that explain each training image; each must have one."""
    offsets = set()
    for xb, yb in loader:
        for img, label in zip(xb, yb, strict=True):
            found = _placements(img, x[int(label)], pad, flips=(False,))
            assert found, f"image {int(label)} is no crop of its padded source"
            offsets |= {(dy, dx) for dy, dx, _ in found}
    return offsets


def test_crops_match_the_dali_loader_semantics():
    pytest.importorskip("nvidia.dali")
    from autofit.data.pipeline import BatchLoader

    x, _ = _images(48, size=16)
    x = np.maximum(x, 1)
    every = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # pad = round(16 / 8)
    dali = _offsets(BatchLoader(x, np.arange(48), 48, train=True, hflip=False), x, 2)
    ours = _offsets(TorchBatchLoader(x, np.arange(48), 48, train=True, hflip=False), x, 2)
    assert dali <= every and ours <= every  # both crop the same zero-padded source
    assert len(dali) > 10 and len(ours) > 10  # offsets spread over the same range


@pytest.fixture(params=["torch", "dali"])
def make(request):
    """Each data path's training loader class (DALI's where it imports)."""
    if request.param == "torch":
        return TorchBatchLoader
    pytest.importorskip("nvidia.dali")
    from autofit.data.pipeline import BatchLoader
    return BatchLoader


def test_the_crop_shift_share_bounds_the_offsets(make):
    """A recipe's `crop_shift` (a share of the side) sets how far both loaders shift."""
    x, _ = _images(48, size=16)
    x = np.maximum(x, 1)
    for share, pad in ((0.0625, 1), (0.25, 4)):  # 1 and 4 pixels at 16
        loader = make(x, np.arange(48), 48, train=True, hflip=False, crop_shift=share)
        offsets = _offsets(loader, x, pad)
        assert max(max(abs(dy), abs(dx)) for dy, dx in offsets) == pad
    still = make(x, np.arange(48), 48, train=True, hflip=False, crop_shift=0.0)
    assert _offsets(still, x, 0) == {(0, 0)}


def _mirrored(loader, x, pad):
    """One epoch: for each image, whether the view of it the loader gave is mirrored."""
    views = {}
    for xb, yb in loader:
        for img, label in zip(xb, yb, strict=True):
            flips = {f for *_, f in _placements(img, x[int(label)], pad)}
            assert len(flips) == 1, f"image {int(label)}: views {flips}"
            views[int(label)] = flips.pop()
    return views


def test_alternate_flip_mirrors_each_image_in_every_other_epoch(make):
    x, _ = _images(64, size=12)
    x = np.maximum(x, 1)  # no pixel looks like the zero padding

    def epochs(alternate):
        loader = make(x, np.arange(64), 16, train=True, alternate_flip=alternate, seed=4)
        return [_mirrored(loader, x, 2) for _ in range(3)]

    first, second, third = epochs(alternate=True)
    assert len(first) == len(second) == len(third) == 64
    assert 16 < sum(first.values()) < 48  # a random half in the first epoch
    assert all(second[i] != first[i] and third[i] == first[i] for i in range(64))
    coins = epochs(alternate=False)  # a coin each epoch: some image keeps its view
    assert any(coins[1][i] == coins[0][i] for i in range(64))
    assert any(coins[1][i] != coins[0][i] for i in range(64))


def test_works_without_dali(tmp_path):
    """DALI made unimportable: decode and the loader still run and never reach for it."""
    import subprocess
    import sys

    x, _ = _images(3, size=8)
    paths = _write(tmp_path, x, ".png")
    code = (
        "import sys; sys.modules['nvidia'] = sys.modules['nvidia.dali'] = None\n"
        "import numpy as np\n"
        "from autofit.data.torch_data import TorchBatchLoader, decode\n"
        f"out, _ = decode({paths!r}, 8, 8, 3, 2)\n"
        "xb, yb = next(iter(TorchBatchLoader(out, np.arange(3), 3, train=True, cutout=0.5)))\n"
        "assert xb.shape == (3, 3, 8, 8)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
