"""The TensorFlow-only speed paths agree with Keras' own ops: fused batch norm in training, conv + batch
norm folded in inference (both fall back to Keras where they cannot serve)."""

import keras
import numpy as np
import pytest

from efficientnetv2.blocks import FusedMBConv, MBConv
from efficientnetv2.tf_fast_paths import FusedBatchNormalization


def _bn_pair(dtype, **kwargs):
    """Keras' BatchNormalization and ours, built alike with the same non-trivial weights."""
    rng = np.random.default_rng(0)
    layers = [cls(momentum=0.9, dtype=dtype, **kwargs)
              for cls in (keras.layers.BatchNormalization, FusedBatchNormalization)]
    weights = [rng.uniform(0.5, 1.5, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.5, 2, 6)]
    for layer in layers:
        layer.build((None, 5, 7, 6))
        layer.set_weights([w.astype("float32") for w in weights])
    return layers


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-2)])
def test_fused_batch_norm_matches_keras(dtype, tolerance):
    """Outputs (training and inference), gradients and moving statistics equal Keras' layer's."""
    theirs, ours = _bn_pair(dtype)
    x = np.random.default_rng(1).normal(2.0, 3.0, (4, 5, 7, 6)).astype("float32")

    def close(a, b, tol=tolerance):
        a, b = np.asarray(a, "float32"), np.asarray(b, "float32")
        np.testing.assert_allclose(b, a, atol=tol * np.abs(a).max())

    for training in (False, True):  # training updates the moving statistics: inference first
        a, b = theirs(x, training=training), ours(x, training=training)
        assert a.dtype == b.dtype
        close(a, b)
    # The moving variance averages the biased batch variance, as Keras does.
    close(theirs.moving_mean, ours.moving_mean, 1e-5)
    close(theirs.moving_variance, ours.moving_variance, 1e-5)

    def grads(layer):
        model = keras.Sequential([keras.Input((5, 7, 6)), layer])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [np.array(w) for w in model.trainable_weights]
        model.train_on_batch(x, np.zeros_like(x))
        return [b - np.array(w) for b, w in zip(before, model.trainable_weights)]

    for a, b in zip(grads(theirs), grads(ours)):
        close(a, b)


def test_fused_batch_norm_config_round_trip():
    # Not in the layer harness: its "evaluate loss goes down after 3 steps" fails for Keras' own
    # BatchNormalization too (evaluation uses the moving statistics).
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-3, name="bn")
    config = layer.get_config()
    clone = FusedBatchNormalization.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone, keras.layers.BatchNormalization)


def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_cannot_serve():
    x = np.random.default_rng(2).normal(size=(2, 3, 6)).astype("float32")  # 3-D
    layer = FusedBatchNormalization()
    layer.build(x.shape)
    assert not layer._fusable(x, None)
    np.testing.assert_allclose(np.array(layer(x, training=True)), np.array(
        keras.layers.BatchNormalization()(x, training=True)), atol=1e-5)
    x4 = np.zeros((2, 3, 3, 6), "float32")
    assert not FusedBatchNormalization(epsilon=1e-6)._fusable(x4, None)
    assert not FusedBatchNormalization(center=False)._fusable(x4, None)
    assert FusedBatchNormalization()._fusable(x4, None) == (keras.backend.backend() == "tensorflow")


@pytest.mark.parametrize(
    "make_block",
    [
        lambda: MBConv(8, 16, expand_ratio=4, se_ratio=0.25, strides=2),
        lambda: MBConv(8, 8, expand_ratio=1, drop_path_rate=0.2),
        lambda: FusedMBConv(8, 8, expand_ratio=4, se_ratio=0.25),
        lambda: FusedMBConv(8, 12, expand_ratio=1, strides=2),
    ],
    ids=["mbconv_e4_s2_se", "mbconv_e1", "fused_e4_se", "fused_e1_s2"],
)
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_inference_with_batch_norm_folded_into_convs_is_unchanged(make_block, dtype, tolerance,
                                                                  monkeypatch):
    from efficientnetv2 import tf_fast_paths

    keras.config.set_dtype_policy(dtype)
    try:
        block = make_block()
    finally:
        keras.config.set_dtype_policy("float32")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype("float32")
    block(x)
    rng = np.random.default_rng(1)
    bns = [l for l in block._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:  # statistics and affine far from the identity, so a wrong fold shows
        bn.set_weights([rng.uniform(0.5, 1.5, bn.gamma.shape), rng.normal(0, 0.5, bn.beta.shape),
                        rng.normal(0, 0.5, bn.moving_mean.shape),
                        rng.uniform(0.3, 2.0, bn.moving_variance.shape)])
    assert tf_fast_paths.foldable(block.project_conv, block.project_bn) == (
        keras.backend.backend() == "tensorflow")
    folded = np.array(block(x, training=False), "float32")
    monkeypatch.setattr(tf_fast_paths, "foldable", lambda conv, bn: False)
    plain = np.array(block(x, training=False), "float32")
    np.testing.assert_allclose(folded, plain, atol=tolerance * np.abs(plain).max())
