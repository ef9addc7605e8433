"""Where a family downsamples, from the input size alone, so one design serves 8 px to 128 px.

Large inputs are reduced in the stem (a stride-2 conv above 48 px, and a 2x max-pool as well
above 96 px, as ImageNet ResNets do) so early stages cost about what they cost on CIFAR; later
stages halve the feature map only while it stays at least MIN_SIDE px, so 8x8 digits are not
pooled down to a single pixel. Parameter counts do not depend on any of this.
"""

from __future__ import annotations

from typing import NamedTuple

MIN_SIDE = 4  # smallest feature-map side a downsampling stage may leave


class Layout(NamedTuple):
    stem_stride: int  # 1 or 2
    stem_pool: bool  # a further 2x max-pool after the stem
    strides: tuple[int, ...]  # per stage: 2 halves the feature map, 1 keeps it
    side: int  # feature-map side after the last stage


def layout(input_size: int, stages: int, first_may_halve: bool = False,
           ceil: bool = True) -> Layout:
    """The stem and per-stage strides for `input_size`.

    `first_may_halve`: the first stage may downsample too (fastnet pools in every block).
    `ceil`: stages halve as stride-2 3x3 convs do (ceil); False for 2x2 max-pools (floor).
    """
    side = input_size
    stem_stride = 2 if side > 48 else 1
    side = -(-side // stem_stride)
    stem_pool = side > 48
    if stem_pool:
        side = -(-side // 2)  # MaxPool2d(3, 2, padding=1)
    strides = []
    for stage in range(stages):
        halved = -(-side // 2) if ceil else side // 2
        halve = (stage > 0 or first_may_halve) and halved >= MIN_SIDE
        strides.append(2 if halve else 1)
        side = halved if halve else side
    return Layout(stem_stride, stem_pool, tuple(strides), side)
