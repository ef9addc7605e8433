"""ImageNet architectures from torchvision, fine-tuned from weights the user already has.

`net` indexes `NETS` (ordered by size, smallest first, so shrinking it to fit a cap takes a
smaller network; new entries go at the end: journals store the index) and `resolution` is the
side the input is resized to inside the model (bilinear, no antialias, so the resize is in the
exported ONNX graph and `autofit predict` needs nothing new). Greyscale input is repeated to
the three channels the networks were trained on, so a network's parameters, and its
state_dict, are torchvision's exactly, whatever the data. Only the classifier head is new (its
keys are torchvision's; its shape follows the classes), with the recipe's dropout before it.

Weights are never downloaded (torchvision's `weights=` enums download; they are only read for
the file names torch.hub gives their URLs). They come from `--weights`, a state_dict file
(whose architecture is recognised from its keys and shapes) or a folder of them, else from
torch's own hub cache (`torch.hub.get_dir()/checkpoints`); in a folder, a network's file is
named `NAME.pth` or as torchvision names it (`mobilenet_v3_small-047dcff4.pth`). Loading
drops the file's head and must match every other key and shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from autofit.errors import UsageError, one_line

FAMILY = "pretrained"


@dataclass(frozen=True)
class Net:
    name: str  # torchvision's builder
    head: str  # the module that maps features to classes, the one layer replaced


NETS: tuple[Net, ...] = (  # parameters without the head (backbone), torchvision 0.29
    Net("shufflenet_v2_x0_5", "fc"),  # 0.34M
    Net("squeezenet1_1", "classifier.1"),  # 0.72M
    Net("mnasnet0_5", "classifier.1"),  # 0.94M
    Net("shufflenet_v2_x1_0", "fc"),  # 1.25M
    Net("mobilenet_v3_small", "classifier.3"),  # 1.52M (its 576-1024 hidden layer kept)
    Net("mobilenet_v2", "classifier.1"),  # 2.22M
    Net("mnasnet1_0", "classifier.1"),  # 3.10M
    Net("efficientnet_b0", "classifier.1"),  # 4.01M
    Net("resnet18", "fc"),  # 11.18M
)
MIN_RESOLUTION = 32  # the networks downsample 32x: below it the last feature map is empty


class DropoutLinear(nn.Linear):
    """A linear head with dropout before it, under the keys of the Linear it replaces, for
    networks whose torchvision head has no dropout of its own."""

    def __init__(self, in_features: int, out_features: int, p: float) -> None:
        super().__init__(in_features, out_features)
        self.drop = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.drop(x))


class Pretrained(nn.Module):
    """A torchvision network (`net`, its state_dict keys torchvision's) behind the resize to
    its resolution and, for greyscale data, the repeat to three channels."""

    def __init__(self, net: nn.Module, name: str, resolution: int, in_channels: int) -> None:
        super().__init__()
        self.net, self.name, self.in_channels = net, name, in_channels
        self.resize = nn.Upsample(size=(resolution, resolution), mode="bilinear",
                                  align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.resize(x)
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)

    def head(self) -> nn.Module:
        return self.net.get_submodule(by_name(self.name).head)


def by_name(name: str) -> Net:
    return next(n for n in NETS if n.name == name)


def build(net: int, resolution: int, in_channels: int, num_classes: int, input_size: int,
          dropout: float = 0.0) -> nn.Module:
    import torchvision

    if not 0 <= net < len(NETS):
        raise ValueError(f"pretrained net must be 0-{len(NETS) - 1} ({names()}), not {net}")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"pretrained resolution must be at least {MIN_RESOLUTION}, "
                         f"not {resolution}")
    if in_channels not in (1, 3):
        raise ValueError(f"pretrained networks take 1 or 3 channels, not {in_channels}")
    spec = NETS[net]
    model = torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in drops:  # the classifier's own dropout (the only one these networks have)
        m.p = dropout
    if not drops:
        fc = model.get_submodule(spec.head)
        assert isinstance(fc, nn.Linear)
        model.set_submodule(spec.head, DropoutLinear(fc.in_features, fc.out_features, dropout))
    return Pretrained(model, spec.name, resolution, in_channels)


def names() -> str:
    return ", ".join(f"{i} {n.name}" for i, n in enumerate(NETS))


def hub_folder() -> Path:
    """torch's own cache of downloaded weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_names(name: str) -> list[str]:
    """What a folder may call `name`'s weights: NAME.pth, or the file name torch.hub gives
    each of torchvision's weight URLs for it (its default first)."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    urls = [enum.DEFAULT.url, *(w.url for w in enum if w is not enum.DEFAULT)]
    return [f"{name}.pth", *(Path(urlparse(url).path).name for url in urls)]


@functools.cache
def _expected(name: str) -> dict[str, torch.Size]:
    """`name`'s state_dict shapes without its head, from a build on the meta device (read,
    never changed: cached, as a search checks a file once per trial)."""
    index = next(i for i, n in enumerate(NETS) if n.name == name)
    with torch.device("meta"):
        model = build(index, MIN_RESOLUTION, 3, 2, MIN_RESOLUTION)
    assert isinstance(model, Pretrained)
    return {k: v.shape for k, v in model.net.state_dict().items()
            if not _is_head(k, NETS[index])}


def _is_head(key: str, net: Net) -> bool:
    return key.startswith(net.head + ".")


def read(path: Path) -> dict[str, Tensor]:
    """A state_dict file, tensors only (weights_only: loading runs no code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UsageError(f"weights {path}: cannot read it as a state_dict ({one_line(err)})") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"weights {path}: not a state_dict (a mapping of names to tensors)")
    return state


def mismatch(state: dict[str, Tensor], name: str) -> tuple[int, str | None]:
    """How many of `name`'s keys `state` matches (name and shape), and the first that it
    does not, said; None when it is `name`'s weights (its head aside). Files older than
    BatchNorm's batch counter may lack `num_batches_tracked`, as torchvision allows."""
    net, expected = by_name(name), _expected(name)
    matched, first = 0, None
    for key, shape in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                first = first or f"key {key!r} is missing"
        elif state[key].shape != shape:
            first = first or (f"key {key!r} has shape {list(state[key].shape)}, "
                              f"{name} has {list(shape)}")
        else:
            matched += 1
    extra = next((k for k in state if k not in expected and not _is_head(k, net)), None)
    if extra is not None:
        first = first or f"key {extra!r} is not one of {name}'s"
    return matched, first


def check(path: Path, name: str) -> dict[str, Tensor]:
    """The file's state_dict, when it is `name`'s weights; a one-line error otherwise."""
    state = read(path)
    _, problem = mismatch(state, name)
    if problem is not None:
        raise UsageError(f"weights {path} do not fit {name}: {problem}")
    return state


def identify(path: Path) -> str:
    """The network a state_dict file is for, from its keys and shapes."""
    state = read(path)
    found = {n.name: mismatch(state, n.name) for n in NETS}
    fits = [name for name, (_, problem) in found.items() if problem is None]
    if fits:
        return fits[0]
    nearest = max(found, key=lambda name: found[name][0])
    raise UsageError(f"--weights {path} are not the weights of any pretrained net ("
                     f"{', '.join(n.name for n in NETS)}); nearest {nearest}: "
                     f"{found[nearest][1]}")


@dataclass(frozen=True)
class Found:
    """The weights found for the pretrained nets: net index -> file, and where it looked."""

    files: dict[int, str]
    looked: str


def find(given: str | None) -> Found:
    """Every net's weights file: `given` (--weights: a file, or a folder), else torch's hub
    cache; each checked against its network's keys, so a wrong file is an error before any
    training."""
    if given is not None and Path(given).is_file():
        path = Path(given).resolve()
        name = identify(path)
        return Found({NETS.index(by_name(name)): str(path)}, f"--weights {path}")
    folder = Path(given) if given is not None else hub_folder()
    looked = f"--weights {folder}" if given is not None else \
        f"torch's hub cache {folder} ($TORCH_HOME/hub/checkpoints)"
    files = {}
    for i, net in enumerate(NETS):
        path = next((folder / f for f in file_names(net.name) if (folder / f).is_file()), None)
        if path is not None:
            check(path, net.name)
            files[i] = str(path.resolve())
    return Found(files, looked)


def load(model: nn.Module, path: str) -> None:
    """`path`'s weights into a built `Pretrained` model, its new head aside."""
    assert isinstance(model, Pretrained)
    spec = by_name(model.name)
    state = check(Path(path), spec.name)
    body = {k: v for k, v in state.items() if not _is_head(k, spec)}
    missing, _ = model.net.load_state_dict(body, strict=False)
    assert all(_is_head(k, spec) or k.endswith("num_batches_tracked") for k in missing), missing


def usable(nets: list[int], given: str | None) -> tuple[dict[int, str], str]:
    """The weights files of those of `nets` (a space's `net` values) that have them, and a
    line saying which were found where; a one-line error naming where it looked when none
    has. A net without weights is not trained from scratch: that is not what a user who asks
    for pretrained networks wants, and another family would train faster from scratch."""
    found = find(given)
    files = {i: found.files[i] for i in nets if i in found.files}
    if not files:
        wanted = ", ".join(NETS[i].name for i in nets)
        raise UsageError(f"no weights for the {FAMILY} family's nets ({wanted}) in "
                         f"{found.looked}; give --weights FILE|DIR (a folder's files named as "
                         f"torchvision's, or NAME.pth); autofit never downloads")
    said = ", ".join(f"{NETS[i].name} ({Path(f).name})" for i, f in files.items())
    return files, f"{FAMILY}: weights for {said} from {found.looked}"
