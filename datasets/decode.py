"""Decoding and cropping: image bytes (or an already decoded image) -> float32 [S, S, 3] in [0, 255].

Every function takes either encoded bytes (a scalar string tensor: JPEG, PNG, GIF, BMP) or a
decoded uint8 image [H, W, C].  JPEGs are cropped while decoding (`tf.io.decode_and_crop_jpeg`),
so only the crop's pixels are decoded: the crop window is chosen from the header's shape first.
Other formats are decoded whole, then cropped.  Grayscale, CMYK and RGBA come out as RGB.

Ordering: crop before resize, so the resize reads only the crop (and for JPEGs the decoder too);
resize is bilinear without antialiasing, as fast as it gets and the values stay in [0, 255].
"""

from typing import Callable, Sequence, Tuple

import tensorflow as tf

CROP_PADDING = 32
AREA_RANGE = (0.08, 1.0)
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10

Window = Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]  # offset_y, offset_x, height, width


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image -> uint8 [H, W, 3] (the first frame of a GIF)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Decoded [H, W, 1|3|4] image -> [H, W, 3] (gray repeated, alpha dropped)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels == 3:
        return image
    raise ValueError(f"decoded image has {channels} channels (shape {image.shape}); "
                     "expected 1, 3 or 4")


def _crop_image(image: tf.Tensor, window_fn: Callable[[tf.Tensor], Window]) -> tf.Tensor:
    """Decode `image` if encoded, cropped to `window_fn(shape)`; uint8 [h, w, 3]."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.string:
        image = to_rgb(image)
        y, x, h, w = window_fn(tf.shape(image))
        return image[y:y + h, x:x + w]

    def jpeg():
        window = tf.stack(window_fn(tf.io.extract_jpeg_shape(image)))
        return tf.io.decode_and_crop_jpeg(image, window, channels=3)

    def other():
        decoded = decode_rgb(image)
        y, x, h, w = window_fn(tf.shape(decoded))
        return decoded[y:y + h, x:x + w]

    cropped = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    cropped.set_shape([None, None, 3])
    return cropped


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Any [h, w, 3] image -> float32 [S, S, 3] in [0, 255] (bilinear)."""
    resized = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                              method=tf.image.ResizeMethod.BILINEAR)
    resized.set_shape([image_size, image_size, 3])
    return resized


def center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int = CROP_PADDING) -> Window:
    """Centered square of side image_size / (image_size + crop_padding) of the short side."""
    height, width = shape[0], shape[1]
    fraction = image_size / (image_size + crop_padding)
    side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def random_crop_window(shape: tf.Tensor, seed: tf.Tensor, image_size: int,
                       area_range: Sequence[float] = AREA_RANGE,
                       aspect_ratio_range: Sequence[float] = ASPECT_RATIO_RANGE,
                       max_attempts: int = MAX_ATTEMPTS) -> Window:
    """Inception-style crop: a random window of area_range of the image (and at least
    MIN_OBJECT_COVERED of it, as in the reference) with aspect ratio in aspect_ratio_range;
    when no sample fits in max_attempts, the center crop instead.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=MIN_OBJECT_COVERED, aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    # The sampler returns the whole image when it finds nothing; the reference then center-crops.
    whole_image = tf.reduce_all(size[:2] == tf.cast(shape[:2], size.dtype))
    center = center_crop_window(shape, image_size)
    sampled = (begin[0], begin[1], size[0], size[1])
    return tuple(tf.where(whole_image, c, s) for c, s in zip(center, sampled))


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                        area_min: float = AREA_RANGE[0]) -> tf.Tensor:
    """Training crop: Inception-style random crop of at least `area_min` of the image's area
    (decoded crop-only for JPEG), resized to S."""
    area_range = (area_min, AREA_RANGE[1])
    return resize(_crop_image(image, lambda shape: random_crop_window(shape, seed, image_size, area_range)),
                  image_size)


def center_crop(image: tf.Tensor, image_size: int, crop_padding: int = CROP_PADDING) -> tf.Tensor:
    """Eval crop: central image_size/(image_size+crop_padding) of the short side, resized to S."""
    return resize(_crop_image(image, lambda shape: center_crop_window(shape, image_size, crop_padding)),
                  image_size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2, decided by `seed`."""
    return tf.image.stateless_random_flip_left_right(image, seed)
