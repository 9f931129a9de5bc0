import keras
import numpy as np
import pytest

from efficientnetv2.blocks import (
    AdjustableDropout,
    FusedBatchNormalization,
    FusedMBConv,
    MBConv,
    SqueezeExcite,
    StochasticDepth,
)
from tests.layer_harness import run_layer_checks

B, H, W = 2, 8, 8


@pytest.mark.parametrize(
    "layer_class, kwargs, in_shape, out_shape",
    [
        (StochasticDepth, dict(rate=0.5, seed=1), (B, H, W, 4), (B, H, W, 4)),
        (AdjustableDropout, dict(rate=0.0, seed=1), (B, 16), (B, 16)),
        (SqueezeExcite, dict(filters=8, se_filters=2), (B, H, W, 8), (B, H, W, 8)),
        (MBConv, dict(in_filters=8, out_filters=8, expand_ratio=4, se_ratio=0.25, drop_path_rate=0.1),
         (B, H, W, 8), (B, H, W, 8)),
        (MBConv, dict(in_filters=8, out_filters=16, expand_ratio=1, strides=2), (B, H, W, 8), (B, 4, 4, 16)),
        (FusedMBConv, dict(in_filters=8, out_filters=8, expand_ratio=1, drop_path_rate=0.2),
         (B, H, W, 8), (B, H, W, 8)),
        (FusedMBConv, dict(in_filters=8, out_filters=12, expand_ratio=4, strides=2, se_ratio=0.25),
         (B, H, W, 8), (B, 4, 4, 12)),
    ],
    ids=["stochastic_depth", "adjustable_dropout", "squeeze_excite", "mbconv_residual", "mbconv_e1_s2", "fused_e1_residual",
         "fused_e4_s2_se"],
)
def test_layer_harness(layer_class, kwargs, in_shape, out_shape):
    run_layer_checks(layer_class, kwargs, in_shape, out_shape, call_kwargs={})


def _sublayer_names(block):
    return [l.name for l in block._flatten_layers(include_self=False, recursive=True)]


@pytest.mark.parametrize(
    "block, expected",
    [
        (MBConv(8, 8, expand_ratio=4, se_ratio=0.25),
         {"expand_conv", "expand_bn", "dwconv2", "bn", "se", "se_reduce", "se_expand", "project_conv",
          "project_bn"}),
        (MBConv(8, 16, expand_ratio=1), {"dwconv2", "bn", "project_conv", "project_bn"}),
        (FusedMBConv(8, 8, expand_ratio=1), {"project_conv", "project_bn"}),
        (FusedMBConv(8, 16, expand_ratio=4), {"expand_conv", "expand_bn", "project_conv", "project_bn"}),
    ],
)
def test_sublayer_names_follow_keras_applications(block, expected):
    assert set(_sublayer_names(block)) - {"drop"} == expected


def test_fused_expand1_is_one_strided_conv_with_activation():
    block = FusedMBConv(4, 6, expand_ratio=1, kernel_size=3, strides=2)
    y = block(np.ones((1, 8, 8, 4), "float32"))
    assert tuple(block.project_conv.kernel.shape) == (3, 3, 4, 6)
    assert block.project_conv.strides == (2, 2)
    # SiLU output is bounded below by about -0.2785.
    assert float(np.min(y)) >= -0.279


@pytest.mark.parametrize("strides, in_f, out_f, residual", [(1, 8, 8, True), (2, 8, 8, False), (1, 8, 16, False)])
def test_residual_decided_in_init(strides, in_f, out_f, residual):
    assert MBConv(in_f, out_f, strides=strides).has_residual is residual
    assert FusedMBConv(in_f, out_f, strides=strides).has_residual is residual


def test_se_width_from_block_input():
    block = MBConv(16, 16, expand_ratio=6, se_ratio=0.25)
    block.build((None, 8, 8, 16))
    assert block.se.se_filters == 4  # int(16 * 0.25), not of the expanded 96
    assert tuple(block.se.se_reduce.kernel.shape) == (1, 1, 96, 4)
    assert block.se.se_reduce.bias is not None and block.se.se_expand.bias is not None


def test_stochastic_depth_drops_whole_samples_and_keeps_expectation():
    layer = StochasticDepth(0.5, seed=3)
    x = np.ones((2000, 2, 2, 3), "float32")
    y = np.array(layer(x, training=True))
    per_sample = y.reshape(2000, -1)
    # Every sample is either all zeros or all 2 (= 1 / keep).
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert abs(y.mean() - 1.0) < 0.1
    np.testing.assert_array_equal(np.array(layer(x, training=False)), x)


def test_stochastic_depth_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        StochasticDepth(1.0)


def test_blocks_inference_is_deterministic_and_training_differs_with_drop_path():
    block = MBConv(8, 8, expand_ratio=2, drop_path_rate=0.5)
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    a, b = block(x, training=False), block(x, training=False)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.allclose(np.array(block(x, training=True)), np.array(block(x, training=True)))


def test_layers_are_registered_serializable():
    for cls in (AdjustableDropout, StochasticDepth, FusedBatchNormalization, SqueezeExcite, MBConv,
                FusedMBConv):
        assert keras.saving.get_registered_object(f"efficientnetv2>{cls.__name__}") is cls


def test_adjustable_dropout_rate_can_be_raised_from_zero():
    layer = AdjustableDropout(0.0, seed=0)
    x = np.ones((1000, 8), "float32")
    np.testing.assert_array_equal(np.array(layer(x, training=True)), x)
    layer.rate = 0.5
    y = np.array(layer(x, training=True))
    assert 0.4 < (y == 0).mean() < 0.6


@pytest.mark.parametrize("block_class", [MBConv, FusedMBConv])
def test_zero_init_residual_starts_a_residual_block_as_the_identity(block_class):
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype("float32")
    block = block_class(8, 8, expand_ratio=4, se_ratio=0.25, zero_init_residual=True)
    np.testing.assert_array_equal(np.asarray(block(x, training=True)), x)
    assert not np.allclose(np.asarray(block_class(8, 8, expand_ratio=4, se_ratio=0.25)(x, training=True)), x)
    # Blocks without a residual keep the usual scale: zeros there would cut the signal.
    strided = block_class(8, 8, strides=2, zero_init_residual=True)
    strided.build((None, 8, 8, 8))
    np.testing.assert_array_equal(np.asarray(strided.project_bn.gamma), 1.0)
    assert block_class.from_config(block.get_config()).zero_init_residual is True
