"""The EfficientNetV2 family as named records (PAPER.md section 2 and the progressive table of section 1).

Each ``VariantSpec`` holds the stage block strings, the width/depth multipliers, the evaluation image
size, the input normalization keras.applications uses, and the progressive-learning ranges (image
size, RandAugment magnitude, mixup alpha, head dropout rate, each from the first stage's value to the
last's). The training size and the head's dropout rate are those ranges' ends, held once.

Progressive ranges: S, M and L are the paper's Table 6. The paper gives none for XL and B0-B3; our
choice, documented here:
- XL takes L's regularization ranges (it is L made deeper and wider) and grows 128 -> 384.
- B0-B3 grow from 128 to their training size; being small, they get weaker regularization than S:
  RandAugment 5 -> 10 (B0, B1) or 5 -> 15 (B2, B3), no mixup, dropout 0.1 -> the reference's head
  dropout.
"""

import dataclasses

from efficientnetv2 import block_strings

__all__ = ["VariantSpec", "Range", "VARIANTS", "get_variant", "variant_names"]

_B_BLOCKS = (
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)


@dataclasses.dataclass(frozen=True)
class Range:
    """A value interpolated linearly over the progressive stages, from ``start`` to ``end``."""

    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One EfficientNetV2 variant."""

    name: str
    blocks: tuple
    width: float
    depth: float
    eval_size: int
    preprocessing: str  # "imagenet_mean_std" (B0-B3) or "minus_one_to_one" (S, M, L, XL)
    image_size: Range
    randaug_magnitude: Range
    mixup_alpha: Range
    dropout: Range
    keras_application: str = ""  # the keras.applications constructor name; "" when there is none

    @property
    def block_args(self):
        """The stages as ``BlockArgs``, before width and depth scaling."""
        return [block_strings.decode(s) for s in self.blocks]


def _b(name, width, depth, train, evaluate, dropout, randaug_end):
    return VariantSpec(
        name=name,
        blocks=_B_BLOCKS,
        width=width,
        depth=depth,
        eval_size=evaluate,
        preprocessing="imagenet_mean_std",
        image_size=Range(128, train),
        randaug_magnitude=Range(5, randaug_end),
        mixup_alpha=Range(0.0, 0.0),
        dropout=Range(0.1, dropout),
        keras_application=f"EfficientNetV2{name.upper()}",
    )


VARIANTS = {
    "b0": _b("b0", 1.0, 1.0, 192, 224, 0.2, 10),
    "b1": _b("b1", 1.0, 1.1, 192, 240, 0.2, 10),
    "b2": _b("b2", 1.1, 1.2, 208, 260, 0.3, 15),
    "b3": _b("b3", 1.2, 1.4, 240, 300, 0.3, 15),
    "s": VariantSpec(
        name="s",
        blocks=(
            "r2_k3_s1_e1_i24_o24_c1",
            "r4_k3_s2_e4_i24_o48_c1",
            "r4_k3_s2_e4_i48_o64_c1",
            "r6_k3_s2_e4_i64_o128_se0.25",
            "r9_k3_s1_e6_i128_o160_se0.25",
            "r15_k3_s2_e6_i160_o256_se0.25",
        ),
        width=1.0,
        depth=1.0,
        eval_size=384,
        preprocessing="minus_one_to_one",
        image_size=Range(128, 300),
        randaug_magnitude=Range(5, 15),
        mixup_alpha=Range(0.0, 0.0),
        dropout=Range(0.1, 0.3),
        keras_application="EfficientNetV2S",
    ),
    "m": VariantSpec(
        name="m",
        blocks=(
            "r3_k3_s1_e1_i24_o24_c1",
            "r5_k3_s2_e4_i24_o48_c1",
            "r5_k3_s2_e4_i48_o80_c1",
            "r7_k3_s2_e4_i80_o160_se0.25",
            "r14_k3_s1_e6_i160_o176_se0.25",
            "r18_k3_s2_e6_i176_o304_se0.25",
            "r5_k3_s1_e6_i304_o512_se0.25",
        ),
        width=1.0,
        depth=1.0,
        eval_size=480,
        preprocessing="minus_one_to_one",
        image_size=Range(128, 380),
        randaug_magnitude=Range(5, 20),
        mixup_alpha=Range(0.0, 0.2),
        dropout=Range(0.1, 0.4),
        keras_application="EfficientNetV2M",
    ),
    "l": VariantSpec(
        name="l",
        blocks=(
            "r4_k3_s1_e1_i32_o32_c1",
            "r7_k3_s2_e4_i32_o64_c1",
            "r7_k3_s2_e4_i64_o96_c1",
            "r10_k3_s2_e4_i96_o192_se0.25",
            "r19_k3_s1_e6_i192_o224_se0.25",
            "r25_k3_s2_e6_i224_o384_se0.25",
            "r7_k3_s1_e6_i384_o640_se0.25",
        ),
        width=1.0,
        depth=1.0,
        eval_size=480,
        preprocessing="minus_one_to_one",
        image_size=Range(128, 380),
        randaug_magnitude=Range(5, 25),
        mixup_alpha=Range(0.0, 0.4),
        dropout=Range(0.1, 0.5),
        keras_application="EfficientNetV2L",
    ),
    "xl": VariantSpec(
        name="xl",
        blocks=(
            "r4_k3_s1_e1_i32_o32_c1",
            "r8_k3_s2_e4_i32_o64_c1",
            "r8_k3_s2_e4_i64_o96_c1",
            "r16_k3_s2_e4_i96_o192_se0.25",
            "r24_k3_s1_e6_i192_o256_se0.25",
            "r32_k3_s2_e6_i256_o512_se0.25",
            "r8_k3_s1_e6_i512_o640_se0.25",
        ),
        width=1.0,
        depth=1.0,
        eval_size=512,
        preprocessing="minus_one_to_one",
        image_size=Range(128, 384),
        randaug_magnitude=Range(5, 25),
        mixup_alpha=Range(0.0, 0.4),
        dropout=Range(0.1, 0.5),
        keras_application="",
    ),
}


def variant_names():
    return sorted(VARIANTS)


def get_variant(name) -> VariantSpec:
    """The spec of ``name``: ``"s"``, ``"S"`` or ``"efficientnetv2-s"``; a ``VariantSpec`` passes through."""
    if isinstance(name, VariantSpec):
        return name
    key = str(name).strip().lower()
    for prefix in ("efficientnetv2-", "efficientnetv2_", "efficientnetv2"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key not in VARIANTS:
        raise ValueError(
            f"unknown EfficientNetV2 variant {name!r}; expected one of {variant_names()} "
            "(optionally prefixed 'efficientnetv2-')"
        )
    return VARIANTS[key]
