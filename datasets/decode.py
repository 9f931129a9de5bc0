"""Decoding and cropping: image bytes (or an already decoded image) -> float32 [S, S, 3] in [0, 255].

Every function takes either encoded bytes (a scalar string tensor: JPEG, PNG, GIF, BMP, WebP) or a
decoded uint8 image [H, W, C].  JPEGs are cropped while decoding (`tf.io.decode_and_crop_jpeg`),
so only the crop's pixels are decoded: the crop window is chosen from the header's shape first.
Other formats (PNG, GIF, BMP, WebP) are decoded whole, then cropped.  Grayscale, CMYK and RGBA
come out as RGB.

Before anything is decoded, the size the header declares is checked (`check_declared_size`): more
than MAX_PIXELS pixels (a decompression bomb: a 746 KB PNG may declare 16000 x 16000), or a JPEG
declaring more pixels than its bytes can hold (a truncated or corrupt one, which libjpeg would
decode to gray with a warning on stderr only), fails like an undecodable image.  The header is read
by graph ops on its first bytes, no Python per image.

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

# The most pixels an image may declare: 2**27 (a 11585 x 11585 square, 400 MB as RGB) holds any
# camera's photo and refuses a header that would take gigabytes per parallel decode.
MAX_PIXELS = 1 << 27
# A JPEG's Huffman-coded scan spends at least one bit per 8x8 block (512 pixels a byte); a header
# declaring 8 times that per byte of file cannot be whole.
JPEG_MAX_PIXELS_PER_BYTE = 4096
_HEADER_BYTES = 32

# Formats by their first bytes (".": any byte): WebP by its first chunk's type.
_SIGNATURES = {
    "png": b"\x89PNG",
    "gif": b"GIF8",
    "bmp": b"BM",
    "vp8": b"RIFF....WEBPVP8 ",
    "vp8l": b"RIFF....WEBPVP8L",
    "vp8x": b"RIFF....WEBPVP8X",
}
# Header fields read by one gather: (offset, bytes, big-endian).
_FIELDS = {
    "png_width": (16, 4, True), "png_height": (20, 4, True),
    "gif_width": (6, 2, False), "gif_height": (8, 2, False),
    "bmp_width": (18, 4, False), "bmp_height": (22, 4, False),
    "vp8_width": (26, 2, False), "vp8_height": (28, 2, False), "vp8l_bits": (21, 4, False),
    "vp8x_width": (24, 3, False), "vp8x_height": (27, 3, False),
}


def _signature_table():
    rows = [sig.ljust(16, b".") for sig in _SIGNATURES.values()]
    return (tf.constant([[0 if c == ord(".") else c for c in row] for row in rows], tf.int64),
            tf.constant([[c != ord(".") for c in row] for row in rows]))


def _field_table():
    index, weight = [], []
    for offset, size, big_endian in _FIELDS.values():
        places = range(size - 1, -1, -1) if big_endian else range(size)
        index.append([offset + i for i in range(4)])
        weight.append([256 ** p for p in places] + [0] * (4 - size))
    return tf.constant(index), tf.constant(weight, tf.int64)


def _declared_shape_not_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 [2] as a PNG, GIF, BMP or WebP header declares it; (0, 0) for anything
    else (left to the decoder to refuse).  A dozen ops for every format at once: this runs per image."""
    header = tf.cast(tf.io.decode_raw(image_bytes, tf.uint8, fixed_length=_HEADER_BYTES), tf.int64)
    pattern, matters = _signature_table()
    matches = tf.reduce_all((header[:16] == pattern) | ~matters, axis=1)
    index, weight = _field_table()
    f = dict(zip(_FIELDS, tf.unstack(tf.reduce_sum(tf.gather(header, index) * weight, axis=1))))
    bmp_height = tf.abs(tf.where(f["bmp_height"] >= 2**31, f["bmp_height"] - 2**32, f["bmp_height"]))
    shapes = tf.stack([  # In _SIGNATURES' order; a negative BMP height means rows top-down.
        [f["png_height"], f["png_width"]],
        [f["gif_height"], f["gif_width"]],
        [bmp_height, f["bmp_width"]],
        [f["vp8_height"] % 2**14, f["vp8_width"] % 2**14],
        [f["vp8l_bits"] // 2**14 % 2**14 + 1, f["vp8l_bits"] % 2**14 + 1],
        [f["vp8x_height"] + 1, f["vp8x_width"] + 1]])
    return tf.reduce_sum(tf.where(matches[:, None], shapes, 0), axis=0)


def declared_shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 [2] as the header of a JPEG, PNG, GIF, BMP or WebP declares it; (0, 0)
    for anything else."""
    return tf.cond(tf.io.is_jpeg(image_bytes),
                   lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64),
                   lambda: _declared_shape_not_jpeg(image_bytes))


def _check_shape(shape: tf.Tensor, image_bytes: tf.Tensor, is_jpeg: bool) -> tf.Tensor:
    """True, or an InvalidArgumentError saying what the header declares when the declared `shape`
    [height, width] is more than MAX_PIXELS pixels or, for a JPEG, more than its bytes can hold."""
    shape = tf.cast(shape[:2], tf.int64)
    pixels = shape[0] * shape[1]
    size = tf.cast(tf.strings.length(image_bytes), tf.int64)
    too_large = pixels > MAX_PIXELS
    cut_short = pixels > JPEG_MAX_PIXELS_PER_BYTE * size if is_jpeg else tf.constant(False)

    def fail():  # The message is built only for an image that fails.
        reason = tf.where(too_large, f"more than the {MAX_PIXELS} pixels an image may have "
                                     "(a decompression bomb?)",
                          "more than its bytes can hold (truncated or corrupt)")
        message = tf.strings.join(["header declares ", tf.strings.as_string(shape[1]), " x ",
                                   tf.strings.as_string(shape[0]), " pixels in ",
                                   tf.strings.as_string(size), " bytes, ", reason])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    return tf.cond(too_large | cut_short, fail, lambda: tf.constant(True))


def check_declared_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """`image_bytes`, or an InvalidArgumentError saying what the header declares when that is more
    than MAX_PIXELS pixels, or more than a JPEG of its bytes can hold."""
    def check(is_jpeg):
        shape = declared_shape(image_bytes)
        with tf.control_dependencies([_check_shape(shape, image_bytes, is_jpeg)]):
            return tf.identity(image_bytes)
    return tf.cond(tf.io.is_jpeg(image_bytes), lambda: check(True), lambda: check(False))


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

    # The declared size is checked before decoding (see the module docstring).
    def jpeg():
        shape = tf.io.extract_jpeg_shape(image)
        with tf.control_dependencies([_check_shape(shape, image, is_jpeg=True)]):
            window = tf.stack(window_fn(shape))
        return tf.io.decode_and_crop_jpeg(image, window, channels=3)

    def other():
        with tf.control_dependencies([_check_shape(_declared_shape_not_jpeg(image), image, is_jpeg=False)]):
            decoded = decode_rgb(tf.identity(image))
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
