"""datasets/randaugment.py: each op's parameter at m = 0, 5, 10, 15, 20 against the reference's
formulas, each op's output against hand-computed values on small images (and against Pillow
where it has the op), alone and inside Dataset.map, the reference's real behaviour in m
(including its uint8 quirks), and the whole policy's determinism by seed."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import randaugment as ra
from tests.datasets_helpers import eager_and_mapped, smooth_image

SEED = np.array([5, 6], np.int64)
IMAGE = smooth_image(0, 32, 40).astype(np.float32)
REFERENCE_OPS = ["auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "color",
                 "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
                 "translate_y", "cutout", "solarize_add"]
ENHANCE = (0.1, 1.0, 1.9, 2.8, 3.7)  # m / 10 * 1.8 + 0.1

# The reference's level_to_arg, written out at m = 0, 5, 10, 15, 20.
PARAMETER_TABLE = {
    "rotate": (0, 15, 30, 45, 60),             # m / 10 * 30 degrees
    "posterize": (0, 2, 4, 6, 8),              # int(m / 10 * 4) bits
    "solarize": (0, 128, 256, 384, 512),       # int(m / 10 * 256)
    "color": ENHANCE, "contrast": ENHANCE, "brightness": ENHANCE, "sharpness": ENHANCE,
    "shear_x": (0, 0.15, 0.3, 0.45, 0.6),      # m / 10 * 0.3
    "shear_y": (0, 0.15, 0.3, 0.45, 0.6),
    "translate_x": (0, 50, 100, 150, 200),     # m / 10 * 100 pixels
    "translate_y": (0, 50, 100, 150, 200),
    "cutout": (0, 20, 40, 60, 80),             # int(m / 10 * 40), half the side
    "solarize_add": (0, 55, 110, 165, 220),    # int(m / 10 * 110)
}


def test_op_set_is_the_reference_one():
    assert list(ra.AUGMENTATIONS) == REFERENCE_OPS
    assert set(ra.PARAMETERS) == set(REFERENCE_OPS) - {"auto_contrast", "equalize", "invert"}


@pytest.mark.parametrize("name", sorted(PARAMETER_TABLE))
def test_parameter_at_magnitudes_matches_the_reference_formula(name):
    got = [float(ra.PARAMETERS[name](m)) for m in (0, 5, 10, 15, 20)]
    np.testing.assert_allclose(got, PARAMETER_TABLE[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, scale", [("posterize", 4), ("solarize", 256), ("cutout", 40),
                                         ("solarize_add", 110)])
@pytest.mark.parametrize("m", [0.7, 2.5, 2.9, 7.4, 8.333333333333334, 11.666666666666666, 25.0])
def test_integer_parameters_truncate_as_python_int(name, scale, m):
    assert float(ra.PARAMETERS[name](m)) == int((m / 10) * scale)


# -- Every op: shape, dtype, range, eager and inside Dataset.map. --------------------------------

@pytest.mark.parametrize("m", [0.0, 5.0, 15.0, 30.0])
@pytest.mark.parametrize("name", REFERENCE_OPS)
def test_op_alone_and_in_map_keeps_shape_dtype_range(name, m):
    out = eager_and_mapped(lambda x, s: ra.augment(x, name, m, s), IMAGE, SEED)
    assert out.shape == IMAGE.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


def test_unknown_op_and_bad_magnitude_are_named():
    with pytest.raises(ValueError, match="unknown RandAugment op 'blur'.*rotate"):
        ra.augment(IMAGE, "blur", 5.0, SEED)
    with pytest.raises(ValueError, match="randaug_magnitude=31"):
        ra.randaugment(IMAGE, SEED, 31)


# -- Outputs on small images, computed by hand. --------------------------------------------------

# A 2x2 image: red spans [0, 255], green [10, 40], blue is flat.
RED = np.array([[0, 100], [150, 255]], np.float32)
GREEN = np.array([[10, 20], [30, 40]], np.float32)
TINY = np.stack([RED, GREEN, np.full([2, 2], 200, np.float32)], axis=-1)


def _op(name, m, image=TINY, seed=SEED):
    return eager_and_mapped(lambda x, s: ra.augment(x, name, m, s), image, seed)


@pytest.mark.parametrize("m", [0.0, 15.0])
def test_auto_contrast_is_full_strength_at_any_magnitude(m):
    out = _op("auto_contrast", m)
    np.testing.assert_allclose(out[..., 0], RED, atol=1e-3)  # already spans [0, 255]
    np.testing.assert_allclose(out[..., 1], [[0, 85], [170, 255]], atol=1e-3)
    np.testing.assert_array_equal(out[..., 2], 200)  # flat: unchanged


def test_invert():
    np.testing.assert_array_equal(_op("invert", 7.0), 255 - TINY)


@pytest.mark.parametrize("m, red", [
    (0.0, [[0, 0], [128, 128]]),     # 0 bits: the shift of 8 clamps to 7, 1 bit stays
    (5.0, [[0, 64], [128, 192]]),    # 2 bits
    (10.0, [[0, 96], [144, 240]]),   # 4 bits
    (15.0, [[0, 100], [148, 252]]),  # 6 bits
    (20.0, [[0, 100], [150, 255]]),  # 8 bits: unchanged
    (25.0, [[0, 0], [128, 128]]),    # 10 bits: a negative shift, clamped to 7 in uint8: 1 bit
])
def test_posterize_keeps_int_m_over_10_times_4_bits_as_the_reference(m, red):
    np.testing.assert_array_equal(_op("posterize", m)[..., 0], red)


@pytest.mark.parametrize("m, red", [
    (0.0, [[255, 155], [105, 0]]),    # threshold 0: every pixel inverted
    (5.0, [[0, 100], [105, 0]]),      # 128
    (7.5, [[0, 100], [150, 0]]),      # 192
    (10.0, [[255, 155], [105, 0]]),   # 256 wraps to 0
    (15.0, [[0, 100], [105, 0]]),     # 384 wraps to 128: as m = 5
    (20.0, [[255, 155], [105, 0]]),   # 512 wraps to 0
])
def test_solarize_threshold_wraps_modulo_256_as_the_reference(m, red):
    np.testing.assert_array_equal(_op("solarize", m)[..., 0], red)


@pytest.mark.parametrize("m, red", [
    (0.0, [[0, 100], [150, 255]]),
    (5.0, [[55, 155], [150, 255]]),    # +55 below 128
    (15.0, [[165, 255], [150, 255]]),  # +165, clipped
])
def test_solarize_add_adds_below_128(m, red):
    np.testing.assert_array_equal(_op("solarize_add", m)[..., 0], red)


def test_brightness_scales_by_the_factor():
    np.testing.assert_allclose(_op("brightness", 0.0), 0.1 * TINY, atol=1e-3)
    np.testing.assert_allclose(_op("brightness", 15.0), np.minimum(2.8 * TINY, 255), atol=1e-3)


def test_color_extrapolates_from_gray():
    gray = TINY @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    expected = np.clip(gray[..., None] + 2.8 * (TINY - gray[..., None]), 0, 255)
    np.testing.assert_allclose(_op("color", 15.0), expected, atol=1e-3)


@pytest.mark.parametrize("size, gray", [(4, 0), (16, 1), (40, 6), (128, 64), (224, 196), (300, 255)])
def test_contrast_blends_towards_pixel_count_gray(size, gray):
    # The reference's bug, reproduced: the target is min(floor(H * W / 256), 255) whatever the
    # image holds.  PIL's contrast would leave a flat image unchanged.
    flat = np.full([size, size, 3], 90, np.float32)
    out = _op("contrast", 15.0, flat)
    np.testing.assert_allclose(out, np.clip(gray + 2.8 * (90 - gray), 0, 255), atol=1e-3)


def test_sharpness_keeps_the_border_and_sharpens_the_interior():
    image = np.full([4, 4, 3], 10, np.float32)
    image[1, 1] = 100
    out = _op("sharpness", 15.0, image)  # factor 2.8
    smooth = np.array([[(5 * 100 + 8 * 10) / 13, (100 + 5 * 10 + 7 * 10) / 13],
                       [(100 + 12 * 10) / 13, (100 + 12 * 10) / 13]])
    interior = np.clip(smooth + 2.8 * (image[1:3, 1:3, 0] - smooth), 0, 255)
    np.testing.assert_allclose(out[1:3, 1:3, 0], interior, atol=1e-3)
    border = np.ones([4, 4], bool)
    border[1:3, 1:3] = False
    np.testing.assert_array_equal(out[border], image[border])


def test_enhance_ops_are_the_identity_at_magnitude_5():
    for name in ("color", "contrast", "brightness", "sharpness"):
        np.testing.assert_array_equal(_op(name, 5.0, IMAGE), IMAGE)


def _indexed(height, width):
    """Pixel values 0, 1, 2, ... (never the fill 128 when there are fewer than 128 pixels)."""
    image = np.arange(height * width, dtype=np.float32).reshape(height, width)
    return np.repeat(image[..., None], 3, axis=-1)


def _sheared_rows(image, shear):
    """Output (x, y) samples the input at (x + round(shear * y), y); 128 outside."""
    expected = np.full_like(image, ra.FILL_VALUE)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            source = x + int(np.round(shear * y))  # shear * y never ends in .5 here
            if 0 <= source < image.shape[1]:
                expected[y, x] = image[y, source]
    return expected


def test_shear_x_is_about_the_top_left_corner():
    image = _indexed(8, 6)
    out = _op("shear_x", 15.0, image)  # +-0.45
    assert any(np.array_equal(out, _sheared_rows(image, s)) for s in (0.45, -0.45))
    np.testing.assert_array_equal(out[0], image[0])  # row 0 does not move


def test_shear_y_is_about_the_top_left_corner():
    image = _indexed(6, 8)
    out = _op("shear_y", 15.0, image)
    transposed = np.transpose(image, [1, 0, 2])
    assert any(np.array_equal(out, np.transpose(_sheared_rows(transposed, s), [1, 0, 2]))
               for s in (0.45, -0.45))


def test_translate_x_shifts_and_fills_gray():
    image = _indexed(4, 10)
    out = eager_and_mapped(lambda x: ra.translate_x(x, 3.0), image)
    np.testing.assert_array_equal(out[:, :-3], image[:, 3:])
    assert np.all(out[:, -3:] == ra.FILL_VALUE)
    out = eager_and_mapped(lambda x: ra.translate_y(x, -2.4), _indexed(10, 4))
    np.testing.assert_array_equal(out[2:], _indexed(10, 4)[:-2])
    assert np.all(out[:2] == ra.FILL_VALUE)


@pytest.mark.parametrize("width", [160, 320])
def test_translation_is_absolute_pixels(width):
    # m = 15: 150 px whatever the image size (the reference's translate_const = 100 at m = 10).
    image = np.zeros([4, width, 3], np.float32)
    out = _op("translate_x", 15.0, image)
    assert np.sum(np.all(out == ra.FILL_VALUE, axis=(0, 2))) == 150


def test_rotate_by_magnitude_30_is_a_quarter_turn():
    square = smooth_image(2, 24, 24).astype(np.float32)
    out = _op("rotate", 30.0, square)  # +-90 degrees
    assert any(np.array_equal(out, np.rot90(square, k, axes=(0, 1))) for k in (1, 3))


@pytest.mark.parametrize("m, half", [(0.0, 0), (0.5, 2), (2.5, 10)])
def test_cutout_fills_a_square_of_side_2_int_4m_around_a_pixel(m, half):
    image = np.full([16, 12, 3], 7, np.float32)
    for seed in range(6):
        out = _op("cutout", m, image, np.array([seed, 1], np.int64))
        filled = np.all(out == ra.FILL_VALUE, axis=-1)
        assert np.all(out[~filled] == 7)
        squares = []
        for cy in range(16):
            for cx in range(12):
                square = np.zeros([16, 12], bool)
                square[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = True
                squares.append(square)
        assert any(np.array_equal(filled, s) for s in squares), (m, seed)


# -- Against Pillow (an independent implementation of the same ops). ----------------------------

@pytest.mark.parametrize("op, args, pil_call", [
    ("equalize", (), lambda ImageOps, ImageEnhance, im: ImageOps.equalize(im)),
    ("auto_contrast", (), lambda ImageOps, ImageEnhance, im: ImageOps.autocontrast(im)),
    ("solarize", (100.0,), lambda ImageOps, ImageEnhance, im: ImageOps.solarize(im, 100)),
    ("posterize", (5.0,), lambda ImageOps, ImageEnhance, im: ImageOps.posterize(im, 5)),
    ("color", (1.6,), lambda ImageOps, ImageEnhance, im: ImageEnhance.Color(im).enhance(1.6)),
    ("brightness", (1.3,), lambda ImageOps, ImageEnhance, im: ImageEnhance.Brightness(im).enhance(1.3)),
    ("sharpness", (1.8,), lambda ImageOps, ImageEnhance, im: ImageEnhance.Sharpness(im).enhance(1.8)),
])
def test_pixel_ops_match_pillow(op, args, pil_call):
    pytest.importorskip("PIL", reason="Pillow is the reference for the pixel ops")
    from PIL import Image, ImageEnhance, ImageOps

    image = smooth_image(1, 32, 40)
    expected = np.asarray(pil_call(ImageOps, ImageEnhance, Image.fromarray(image)), np.float32)
    out = eager_and_mapped(lambda x: getattr(ra, op)(x, *args), image.astype(np.float32))
    diff = np.abs(out - expected)
    assert diff.max() <= 1.5, f"{op}: max difference {diff.max()} from Pillow"


# -- Strength against m: the reference's real behaviour. -----------------------------------------

def _distortion(name, m, image, seed=SEED):
    return float(np.abs(ra.augment(image, name, m, seed).numpy() - image).mean())


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y",
                                  "cutout", "solarize_add"])
def test_geometric_ops_cutout_and_solarize_add_grow_from_nothing(name):
    image = smooth_image(3, 256, 256).astype(np.float32)
    distortion = [_distortion(name, m, image) for m in (0.0, 5.0, 10.0, 15.0, 20.0)]
    assert distortion[0] == 0.0
    assert all(a < b for a, b in zip(distortion, distortion[1:])), distortion


@pytest.mark.parametrize("name", ["color", "contrast", "brightness", "sharpness"])
def test_enhance_ops_are_strong_at_0_none_at_5_then_grow(name):
    distortion = [_distortion(name, m, IMAGE) for m in (0.0, 5.0, 10.0, 15.0, 20.0)]
    assert distortion[1] == 0.0 and distortion[0] > 0.0
    assert all(a < b for a, b in zip(distortion[1:], distortion[2:])), distortion


def test_posterize_weakens_as_m_grows_up_to_20():
    distortion = [_distortion("posterize", m, IMAGE) for m in (0.0, 5.0, 10.0, 15.0, 20.0)]
    assert all(a > b for a, b in zip(distortion, distortion[1:])), distortion
    assert distortion[-1] == 0.0


@pytest.mark.parametrize("name", ["auto_contrast", "equalize", "invert"])
def test_ops_without_parameter_do_not_depend_on_m(name):
    first = ra.augment(IMAGE, name, 0.0, SEED).numpy()
    assert np.abs(first - IMAGE).mean() > 0.5
    for m in (5.0, 15.0, 30.0):
        np.testing.assert_array_equal(ra.augment(IMAGE, name, m, SEED).numpy(), first)


def test_policy_distortion_is_least_at_5_and_grows_from_there():
    # 24 images x 8 seeds each, so the random op choice averages out (the same choices at every m).
    images = np.stack([smooth_image(10 + i, 32, 32) for i in range(24)]).astype(np.float32)
    images = tf.constant(np.repeat(images, 8, axis=0))
    seeds = tf.stack([tf.range(192, dtype=tf.int64), tf.zeros([192], tf.int64)], axis=1)

    @tf.function
    def mean_distortion(m):
        out = tf.map_fn(lambda args: ra.randaugment(args[0], args[1], m), (images, seeds),
                        fn_output_signature=tf.float32)
        return tf.reduce_mean(tf.abs(out - images))

    distortion = [float(mean_distortion(tf.constant(m))) for m in (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)]
    assert distortion[0] > distortion[1] > 0.0, distortion  # m = 0 is not the identity
    assert all(a < b for a, b in zip(distortion[1:], distortion[2:])), distortion


# -- The policy. ---------------------------------------------------------------------------------

def test_randaugment_is_deterministic_per_seed():
    first = eager_and_mapped(lambda x, s: ra.randaugment(x, s, 15.0), IMAGE, SEED)
    np.testing.assert_array_equal(first, ra.randaugment(IMAGE, SEED, 15.0).numpy())
    others = [ra.randaugment(IMAGE, np.array([s, 0], np.int64), 15.0).numpy() for s in range(6)]
    assert any(not np.array_equal(first, o) for o in others)


def test_randaugment_draws_every_op():
    # One layer at m = 15 over many seeds: each op without a random sign or position shows up
    # with its own result (the other six depend on the op's seed).
    fixed = ["auto_contrast", "equalize", "invert", "posterize", "solarize", "color", "contrast",
             "brightness", "sharpness", "solarize_add"]
    results = {name: ra.augment(IMAGE, name, 15.0, SEED).numpy() for name in fixed}
    seen = set()
    for s in range(120):
        out = ra.randaugment(IMAGE, np.array([s, 3], np.int64), 15.0, num_layers=1).numpy()
        # The policy is a traced graph, whose float sums may round differently from the eager op's.
        seen.update(name for name, image in results.items() if np.allclose(out, image, atol=1e-3))
    assert seen == set(fixed)


def test_pixel_scale_scales_translate_and_cutout_and_nothing_else():
    # m = 15: translate 150 px and cutout half-side 60 at scale 1; 60 px and 24 at scale 0.4.
    image = np.zeros([200, 200, 3], np.float32)
    changed, unchanged = set(), 0
    for s in range(150):
        seed = np.array([s, 4], np.int64)
        reference = ra.randaugment(image, seed, 15.0, num_layers=1).numpy()
        scaled = ra.randaugment(image, seed, 15.0, num_layers=1, pixel_scale=0.4).numpy()
        if np.array_equal(reference, scaled):
            unchanged += 1
            continue
        filled_reference, filled_scaled = (np.all(out == ra.FILL_VALUE, axis=-1) for out in (reference, scaled))
        if filled_reference.all(axis=0).sum() == 150:
            assert filled_scaled.all(axis=0).sum() == 60
            changed.add("translate_x")
        elif filled_reference.all(axis=1).sum() == 150:
            assert filled_scaled.all(axis=1).sum() == 60
            changed.add("translate_y")
        else:  # cutout: a square of side 2 x half-side, clipped at the border
            rows, cols = np.nonzero(filled_scaled)
            assert 0 < np.ptp(rows) + 1 <= 48 and 0 < np.ptp(cols) + 1 <= 48
            rows, cols = np.nonzero(filled_reference)
            assert max(np.ptp(rows), np.ptp(cols)) + 1 > 48
            changed.add("cutout")
    assert changed == {"translate_x", "translate_y", "cutout"} and unchanged > 100
    np.testing.assert_array_equal(ra.randaugment(IMAGE, SEED, 15.0, pixel_scale=1.0),
                                  ra.randaugment(IMAGE, SEED, 15.0))
    with pytest.raises(ValueError, match="randaug_pixel_scale=0"):
        ra.randaugment(IMAGE, SEED, 15.0, pixel_scale=0)
