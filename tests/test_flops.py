"""Multiply-add counts against the paper's figures and a tiny model counted by hand."""

import pytest

from efficientnetv2 import build_model
from efficientnetv2.flops import count_flops
from efficientnetv2.io.keras_applications import build_keras_application

TINY_BLOCKS = "r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_se0.25,r1_k3_s1_e2_i16_o16_c1"
TINY_KWARGS = dict(blocks=TINY_BLOCKS, head_filters=32, num_classes=10)

# TINY_BLOCKS at 16 px with a 32-wide head and 10 classes, counted by hand:
TINY_16PX = sum([
    8 * 8 * (3 * 3 * 3 * 8),  # stem 3x3 stride 2 to 8 channels: 8x8 output
    8 * 8 * (3 * 3 * 8 * 8),  # fused, expand 1: one 3x3 conv 8 -> 8 at 8x8
    8 * 8 * (8 * 16),  # MBConv expand 1x1 8 -> 16 at 8x8
    4 * 4 * (3 * 3 * 16),  # depthwise 3x3 stride 2 on 16 channels: 4x4 output
    2 * (16 * 2),  # SE: 16 -> max(1, int(8 * 0.25)) = 2 -> 16, on 1x1
    4 * 4 * (16 * 16),  # project 1x1 16 -> 16 at 4x4
    4 * 4 * (3 * 3 * 16 * 32),  # fused, expand 2: 3x3 conv 16 -> 32 at 4x4
    4 * 4 * (32 * 16),  # its 1x1 project 32 -> 16
    4 * 4 * (16 * 32),  # top_conv 1x1 16 -> 32
    32 * 10,  # classifier
])


def test_tiny_variant_counted_by_hand():
    assert TINY_16PX == 155_776
    assert count_flops("s", 16, width=1.0, depth=1.0, **TINY_KWARGS) == TINY_16PX


def test_tiny_model_counted_by_hand():
    model = build_model("s", input_shape=(16, 16, 3), **TINY_KWARGS)
    assert count_flops(model) == TINY_16PX


def test_model_built_for_any_size_is_counted_at_the_given_size():
    model = build_model("s", input_shape=(None, None, 3), **TINY_KWARGS)
    assert count_flops(model, 16) == TINY_16PX
    with pytest.raises(ValueError, match="image_size"):
        count_flops(model)


def test_fixed_size_model_refuses_another_size():
    model = build_model("s", input_shape=(16, 16, 3), **TINY_KWARGS)
    with pytest.raises(ValueError, match="not 32"):
        count_flops(model, 32)


def test_without_top():
    with_top = count_flops("b0", 224)
    no_top = count_flops("b0", 224, include_top=False)
    assert with_top - no_top == 1280 * 1000


# The paper's figures (PAPER.md section 3) at the evaluation sizes, counted as multiply-adds:
# S 8.4-8.8B at 384, M 24B and L 53-56B at 480 (rounded; ours counts convolutions and dense only).
@pytest.mark.parametrize(
    "variant, size, low, high",
    [("s", 384, 8.3e9, 8.9e9), ("m", 480, 23.5e9, 25.0e9), ("l", 480, 53e9, 56.5e9)],
)
def test_paper_figures(variant, size, low, high):
    assert low <= count_flops(variant, size) <= high


def test_b0_model_walk_matches_spec_and_keras_applications():
    """Three independent routes: the block strings, our built model, keras.applications' model."""
    expected = count_flops("b0", 224)
    assert count_flops(build_model("b0", input_shape=(224, 224, 3))) == expected
    assert count_flops(build_keras_application("b0", input_shape=(224, 224, 3))) == expected


def test_variant_needs_image_size():
    with pytest.raises(ValueError, match="image_size"):
        count_flops("s")
