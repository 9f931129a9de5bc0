"""datasets/randaugment.py: every op alone and inside Dataset.map, against Pillow where it has the
op, m = 0 is the identity, distortion grows with m, and the whole policy is seed-deterministic."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import randaugment as ra
from tests.datasets_helpers import eager_and_mapped, smooth_image

SEED = np.array([5, 6], np.int64)
IMAGE = smooth_image(0, 32, 40).astype(np.float32)


@pytest.mark.parametrize("name", sorted(ra.AUGMENTATIONS))
def test_op_alone_and_in_map_keeps_shape_dtype_range(name):
    out = eager_and_mapped(lambda x, s: ra.augment(x, name, 15.0, s), IMAGE, SEED)
    assert out.shape == IMAGE.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("name", sorted(ra.AUGMENTATIONS))
def test_op_at_magnitude_zero_is_identity(name):
    out = eager_and_mapped(lambda x, s: ra.augment(x, name, 0.0, s), IMAGE, SEED)
    np.testing.assert_array_equal(out, IMAGE)


@pytest.mark.parametrize("name", sorted(set(ra.AUGMENTATIONS) - {"identity"}))
def test_op_changes_the_image_at_high_magnitude(name):
    out = ra.augment(IMAGE, name, 30.0, SEED).numpy()
    assert np.abs(out - IMAGE).mean() > 0.5


def test_unknown_op_and_bad_magnitude_are_named():
    with pytest.raises(ValueError, match="unknown RandAugment op 'blur'.*rotate"):
        ra.augment(IMAGE, "blur", 5.0, SEED)
    with pytest.raises(ValueError, match="randaug_magnitude=31"):
        ra.randaugment(IMAGE, SEED, 31)


# -- Against Pillow (an independent implementation of the same ops). ----------------------------

def _pil():
    return pytest.importorskip("PIL", reason="Pillow is the reference for the pixel ops")


@pytest.mark.parametrize("op, pil_call", [
    ("equalize", lambda Image, ImageOps, ImageEnhance, im: ImageOps.equalize(im)),
    ("auto_contrast", lambda Image, ImageOps, ImageEnhance, im: ImageOps.autocontrast(im)),
    ("solarize", lambda Image, ImageOps, ImageEnhance, im: ImageOps.solarize(im, 100)),
    ("posterize", lambda Image, ImageOps, ImageEnhance, im: ImageOps.posterize(im, 5)),
    ("color", lambda Image, ImageOps, ImageEnhance, im: ImageEnhance.Color(im).enhance(1.6)),
    ("contrast", lambda Image, ImageOps, ImageEnhance, im: ImageEnhance.Contrast(im).enhance(0.4)),
    ("brightness", lambda Image, ImageOps, ImageEnhance, im: ImageEnhance.Brightness(im).enhance(1.3)),
    ("sharpness", lambda Image, ImageOps, ImageEnhance, im: ImageEnhance.Sharpness(im).enhance(1.8)),
])
def test_pixel_ops_match_pillow(op, pil_call):
    _pil()
    from PIL import Image, ImageEnhance, ImageOps

    image = smooth_image(1, 32, 40)
    expected = np.asarray(pil_call(Image, ImageOps, ImageEnhance, Image.fromarray(image)), np.float32)
    args = {"equalize": (), "auto_contrast": (), "solarize": (100.0,), "posterize": (3.0,),
            "color": (1.6,), "contrast": (0.4,), "brightness": (1.3,), "sharpness": (1.8,)}[op]
    out = eager_and_mapped(lambda x: getattr(ra, op)(x, *args), image.astype(np.float32))
    diff = np.abs(out - expected)
    if op == "sharpness":  # Pillow keeps the border; ours filters it (mirrored).
        diff = diff[1:-1, 1:-1]
    assert diff.max() <= 1.5, f"{op}: max difference {diff.max()} from Pillow"


# -- Geometry against numpy. --------------------------------------------------------------------

def test_rotate_quarter_turn_is_rot90():
    square = smooth_image(2, 24, 24).astype(np.float32)
    out = eager_and_mapped(lambda x: ra.rotate(x, 90.0), square)
    assert any(np.array_equal(out, np.rot90(square, k, axes=(0, 1))) for k in (1, 3))


def test_translate_shifts_and_fills_gray():
    out = eager_and_mapped(lambda x: ra.translate_x(x, 3.0), IMAGE)
    np.testing.assert_array_equal(out[:, 3:], IMAGE[:, :-3])
    assert np.all(out[:, :3] == ra.FILL_VALUE)
    out = eager_and_mapped(lambda x: ra.translate_y(x, -2.0), IMAGE)
    np.testing.assert_array_equal(out[:-2], IMAGE[2:])
    assert np.all(out[-2:] == ra.FILL_VALUE)


def test_shear_x_shifts_rows_by_distance_from_center():
    out = eager_and_mapped(lambda x: ra.shear_x(x, 0.25), IMAGE)
    center = (IMAGE.shape[0] - 1) / 2
    for row in (0, 8, 31):
        shift = int(np.round(0.25 * (row - center)))
        if shift > 0:  # Output x samples input x + shift.
            np.testing.assert_array_equal(out[row, :-shift - 1], IMAGE[row, shift:-1])


def test_translation_is_relative_to_image_size():
    # Same magnitude, same seed: the shift is the same fraction of a small and a large image.
    small, large = np.zeros([20, 20, 3], np.float32) + 255, np.zeros([80, 80, 3], np.float32) + 255
    filled = [np.mean(ra.augment(im, "translate_x", 10.0, SEED).numpy() == ra.FILL_VALUE)
              for im in (small, large)]
    assert filled[0] > 0.2 and abs(filled[0] - filled[1]) < 0.05


# -- The policy. ---------------------------------------------------------------------------------

def test_randaugment_at_magnitude_zero_is_identity():
    out = eager_and_mapped(lambda x, s: ra.randaugment(x, s, 0.0, 2), IMAGE, SEED)
    np.testing.assert_array_equal(out, IMAGE)


def test_randaugment_is_deterministic_per_seed():
    first = ra.randaugment(IMAGE, SEED, 15.0).numpy()
    np.testing.assert_array_equal(first, ra.randaugment(IMAGE, SEED, 15.0).numpy())
    others = [ra.randaugment(IMAGE, np.array([s, 0], np.int64), 15.0).numpy() for s in range(6)]
    assert any(not np.array_equal(first, o) for o in others)


def test_distortion_grows_with_magnitude():
    # 24 images x 8 seeds each, so the random op choice averages out.
    images = np.stack([smooth_image(10 + i, 32, 32) for i in range(24)]).astype(np.float32)
    images = tf.constant(np.repeat(images, 8, axis=0))
    seeds = tf.stack([tf.range(192, dtype=tf.int64), tf.zeros([192], tf.int64)], axis=1)

    @tf.function
    def mean_distortion(m):
        out = tf.map_fn(lambda args: ra.randaugment(args[0], args[1], m), (images, seeds),
                        fn_output_signature=tf.float32)
        return tf.reduce_mean(tf.abs(out - images))

    distortion = [float(mean_distortion(tf.constant(m))) for m in (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)]
    assert distortion[0] == 0.0
    assert all(a < b for a, b in zip(distortion, distortion[1:])), distortion
