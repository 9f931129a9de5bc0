"""datasets/decode.py: decoding, crops, flips, each eagerly and inside Dataset.map."""

import io

import numpy as np
import pytest
import tensorflow as tf

from datasets import decode
from tests.datasets_helpers import (cmyk_jpeg_bytes, eager_and_mapped, jpeg_bytes, pillow_bytes,
                                    png_bomb, png_bytes, smooth_image)

SEED = np.array([3, 4], np.int64)


def _encodings():
    rgb = smooth_image(0)
    gray = rgb[..., :1]
    rgba = np.concatenate([rgb, np.full_like(rgb[..., :1], 200)], axis=-1)
    return {"jpeg": (jpeg_bytes(rgb), rgb), "png": (png_bytes(rgb), rgb),
            "gray_jpeg": (jpeg_bytes(gray), np.repeat(gray, 3, -1)),
            "gray_png": (png_bytes(gray), np.repeat(gray, 3, -1)),
            "rgba_png": (png_bytes(rgba), rgb)}


@pytest.mark.parametrize("kind", sorted(_encodings()))
def test_decode_rgb_gives_three_channels(kind):
    data, expected = _encodings()[kind]
    image = eager_and_mapped(decode.decode_rgb, data)
    assert image.shape == expected.shape and image.dtype == np.uint8
    tolerance = 6 if "jpeg" in kind else 0
    assert np.abs(image.astype(int) - expected).mean() <= tolerance


def test_decode_rgb_converts_cmyk_jpeg():
    pytest.importorskip("PIL", reason="Pillow writes the CMYK JPEG")
    rgb = smooth_image(1)
    data = cmyk_jpeg_bytes(rgb)
    assert tf.io.extract_jpeg_shape(data).numpy()[2] == 4
    image = eager_and_mapped(decode.decode_rgb, data)
    assert image.shape == rgb.shape
    assert np.abs(image.astype(int) - rgb).mean() < 8  # Not inverted, not garbage.


@pytest.mark.parametrize("kind", sorted(_encodings()))
def test_random_resized_crop_shape_dtype_range(kind):
    data, _ = _encodings()[kind]
    image = eager_and_mapped(lambda d, s: decode.random_resized_crop(d, s, 24), data, SEED)
    assert image.shape == (24, 24, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255


def test_random_resized_crop_jpeg_crop_decode_equals_full_decode_then_crop():
    data = jpeg_bytes(smooth_image(2, 96, 128))
    decoded = tf.io.decode_jpeg(data, channels=3)
    for seed in range(5):
        seed = np.array([seed, 1], np.int64)
        from_bytes = decode.random_resized_crop(data, seed, 32).numpy()
        from_pixels = decode.random_resized_crop(decoded, seed, 32).numpy()
        np.testing.assert_allclose(from_bytes, from_pixels, atol=1.0)


def test_random_resized_crop_is_a_function_of_the_seed():
    data = jpeg_bytes(smooth_image(3, 96, 128))
    first = decode.random_resized_crop(data, SEED, 32).numpy()
    np.testing.assert_array_equal(first, decode.random_resized_crop(data, SEED, 32).numpy())
    other = decode.random_resized_crop(data, np.array([9, 9], np.int64), 32).numpy()
    assert np.abs(first - other).mean() > 1


def test_random_crop_window_respects_area_and_aspect_ranges():
    shape = tf.constant([300, 400, 3])
    for i in range(40):
        y, x, h, w = (int(v) for v in decode.random_crop_window(shape, tf.constant([i, 0]), 64))
        assert 0 <= y and 0 <= x and y + h <= 300 and x + w <= 400
        if (h, w) == (300, 400):
            pytest.fail("whole image returned instead of the center-crop fallback")
        area = h * w / (300 * 400)
        assert 0.08 - 0.01 <= area <= 1.0
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_random_crop_window_falls_back_to_center_crop():
    # 8 x 1000: no window of >= 8% area has an aspect ratio within [3/4, 4/3].
    shape = tf.constant([8, 1000, 3])
    window = [int(v) for v in decode.random_crop_window(shape, tf.constant([1, 2]), 32)]
    assert window == [int(v) for v in decode.center_crop_window(shape, 32)]


def test_center_crop_window_uses_crop_padding():
    # image_size / (image_size + 32) of the short side: 32 / 64 * 100 = 50, centered.
    assert [int(v) for v in decode.center_crop_window(tf.constant([100, 200, 3]), 32)] == [25, 75, 50, 50]


def test_center_crop_keeps_the_center():
    image = np.zeros([100, 200, 3], np.uint8)
    image[25:75, 75:125] = [10, 200, 90]  # Exactly the center window of a 32 px crop.
    for data in (png_bytes(image), image):
        out = eager_and_mapped(lambda d: decode.center_crop(d, 32), data)
        assert out.shape == (32, 32, 3)
        np.testing.assert_allclose(out, np.broadcast_to([10, 200, 90], out.shape), atol=1e-3)


def test_resize_returns_static_float_image():
    out = eager_and_mapped(lambda i: decode.resize(i, 17), smooth_image(4))
    assert out.shape == (17, 17, 3) and out.dtype == np.float32


def test_random_flip_flips_some_seeds_and_not_others():
    image = smooth_image(5).astype(np.float32)
    flipped = 0
    for i in range(20):
        out = eager_and_mapped(decode.random_flip, image, np.array([i, 7], np.int64))
        if np.array_equal(out, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 3 <= flipped <= 17


def test_undecodable_bytes_raise():
    for data in (b"", b"not an image", jpeg_bytes(smooth_image(6))[:200]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            decode.random_resized_crop(tf.constant(data), SEED, 16).numpy()


FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


@pytest.mark.parametrize("image_format", FORMATS)
def test_declared_shape_is_the_one_pillow_reads(image_format):
    from PIL import Image

    data = pillow_bytes(smooth_image(7, 37, 53), image_format)
    assert tuple(eager_and_mapped(decode.declared_shape, data)) == Image.open(io.BytesIO(data)).size[::-1]


def _bomb(image_format, height, width):
    """A small `image_format` file whose header declares `height` x `width`."""
    if image_format == "PNG":
        return png_bomb(height, width)
    data = bytearray(pillow_bytes(smooth_image(8), image_format))
    if image_format == "JPEG":
        start = data.find(b"\xff\xc0") + 5
        data[start:start + 4] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    if image_format == "GIF":
        data[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    if image_format == "BMP":
        data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    if image_format == "WEBP":  # Pillow writes a lossy frame: chunk "VP8 ", 14-bit sizes.
        data[26:30] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return bytes(data)


def _raises_eagerly_and_mapped(fn, data, match):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        fn(tf.constant(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        next(iter(tf.data.Dataset.from_tensors(data).map(fn)))


@pytest.mark.parametrize("image_format", FORMATS)
def test_header_declaring_too_many_pixels_is_refused_before_decoding(image_format):
    data = _bomb(image_format, 12000, 12000)  # 144 megapixels (WebP allows up to 16383 a side)
    for crop in (lambda x: decode.center_crop(x, 16), lambda x: decode.random_resized_crop(x, SEED, 16)):
        _raises_eagerly_and_mapped(crop, data, f"header declares 12000 x 12000 pixels in {len(data)} "
                                               f"bytes, more than the {decode.MAX_PIXELS} pixels")


def test_jpeg_declaring_more_than_its_bytes_hold_is_refused():
    data = _bomb("JPEG", 3000, 3000)  # 9 megapixels in about a kilobyte; libjpeg decodes it gray
    assert 3000 * 3000 < decode.MAX_PIXELS
    _raises_eagerly_and_mapped(lambda x: decode.center_crop(x, 16), data, "more than its bytes can hold")


def test_images_at_the_limits_decode():
    # The largest VP8 WebP side and a PNG declaring exactly MAX_PIXELS are not refused by the check.
    assert decode.declared_shape(tf.constant(_bomb("PNG", 2**13, 2**14))).numpy().prod() == decode.MAX_PIXELS
    assert decode.center_crop(tf.constant(pillow_bytes(smooth_image(9), "WEBP")), 16).shape == (16, 16, 3)


def test_crop_area_min_keeps_crops_large():
    """A horizontal gradient: a crop's value range is its width's share of the image."""
    gradient = np.broadcast_to(np.linspace(0, 255, 100).astype(np.uint8)[None, :, None], (100, 100, 3)).copy()

    def smallest_range(crop):
        return min(float(np.ptp(crop(np.array([i, 3], np.int64)))) for i in range(30))

    from datasets import pipeline  # noqa: PLC0415 (imports the whole input pipeline)

    # At least 0.6 of the area with aspect ratio in [3/4, 4/3]: at least 0.67 of the width.
    large = smallest_range(lambda seed: pipeline.train_example(
        {"image": gradient, "label": 0}, seed, 32, 2, randaug_magnitude=0, crop_area_min=0.6)[0])
    default = smallest_range(lambda seed: decode.random_resized_crop(gradient, seed, 32))
    assert large >= 0.6 * 255
    assert default < 0.6 * 255
