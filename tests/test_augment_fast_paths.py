"""The fast formulations in datasets/randaugment.py and datasets/mixing.py against the TensorFlow
kernels and textbook formulas they replace: the gather-based affine transform gives the pixels of
ImageProjectiveTransformV3 (NEAREST, CONSTANT) exactly, ties included; Sharpness by shifted slices
equals the depthwise convolution with PIL's SMOOTH kernel, and mixup computed in place equals the
convex combination, both up to float rounding."""

import math

import numpy as np
import pytest
import tensorflow as tf

from datasets import mixing, randaugment as ra
from tests.datasets_helpers import eager_and_mapped, smooth_image

# Distinct values per pixel (the fill 128 included among them), so any misplaced pixel shows.
INDEXED = np.repeat(np.arange(37 * 53, dtype=np.float32).reshape(37, 53, 1), 3, axis=-1)
INDEXED[..., 1] += 0.25
INDEXED[..., 2] += 0.5


def _kernel(image, transform):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(image)[None], transforms=tf.reshape(transform, [1, 8]),
        output_shape=tf.shape(image)[:2], fill_value=ra.FILL_VALUE, interpolation="NEAREST",
        fill_mode="CONSTANT")[0]


def _rotation_rows(image, degrees):
    """The coefficients ra.rotate computes, as float32 tensors."""
    radians = tf.constant(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0
    return (cos, -sin, cx - cos * cx + sin * cy), (sin, cos, cy - sin * cx - cos * cy)


@pytest.mark.parametrize("degrees", [-135.0, -45.0, -30.5, -7.0, 0.3, 15.0, 45.0, 90.0, 180.0])
def test_transform_matches_the_tensorflow_kernel_for_rotations(degrees):
    x_row, y_row = _rotation_rows(INDEXED, degrees)
    expected = _kernel(INDEXED, tf.stack([*x_row, *y_row, 0.0, 0.0])).numpy()
    np.testing.assert_array_equal(ra._transform(INDEXED, x_row, y_row).numpy(), expected)
    # Inside Dataset.map too: a graph rewrite that regroups the coordinates' sums shows up there.
    np.testing.assert_array_equal(eager_and_mapped(lambda x: ra.rotate(x, degrees), INDEXED), expected)


# 0.5 and 1.5 put every other row's source exactly on a half pixel: std::round's ties.
@pytest.mark.parametrize("shear", [-1.5, -0.5, -0.45, -0.15, 0.0, 0.15, 0.3, 0.45, 0.5, 1.5])
def test_transform_matches_the_tensorflow_kernel_for_shears(shear):
    np.testing.assert_array_equal(
        eager_and_mapped(lambda x: ra.shear_x(x, shear), INDEXED),
        _kernel(INDEXED, tf.constant([1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])).numpy())
    np.testing.assert_array_equal(
        eager_and_mapped(lambda x: ra.shear_y(x, shear), INDEXED),
        _kernel(INDEXED, tf.constant([1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0])).numpy())


def _depthwise_sharpness(image, factor):
    """Sharpness as one depthwise convolution with PIL's SMOOTH kernel (the former formulation)."""
    detail = tf.constant(ra._SMOOTH) / 13.0 - tf.constant(ra._CENTER)
    kernel = tf.tile(detail[:, :, None, None], [1, 1, 3, 1]) * (1.0 - factor)
    change = tf.nn.depthwise_conv2d(image[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    return tf.clip_by_value(image + tf.pad(change, [[1, 1], [1, 1], [0, 0]]), 0.0, 255.0)


@pytest.mark.parametrize("factor", [0.1, 1.0, 2.8, 3.7])
def test_sharpness_equals_the_depthwise_convolution(factor):
    image = smooth_image(4, 61, 47).astype(np.float32)
    out = eager_and_mapped(lambda x: ra.sharpness(x, factor), image)
    np.testing.assert_allclose(out, _depthwise_sharpness(image, factor).numpy(), atol=1e-3)


def test_mixup_equals_the_convex_combination_with_the_reversed_batch():
    images = np.stack([smooth_image(i, 16, 16) for i in range(6)]).astype(np.float32)
    labels = np.eye(6, dtype=np.float32)
    seed = np.array([3, 4], np.int64)
    out, _ = eager_and_mapped(lambda x, y, s: mixing.mixup(x, y, s, 0.4), images, labels, seed)
    lam = mixing.sample_beta(seed, 0.4, [6]).numpy()[:, None, None, None]
    np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], atol=1e-3)
