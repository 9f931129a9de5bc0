"""RandAugment (Cubuk et al., 2020) in the units of the EfficientNetV2 reference release, as
stateless graph-mode TensorFlow ops.

`randaugment(image, seed, magnitude, num_layers)` applies `num_layers` ops drawn uniformly from
the 16 in AUGMENTATIONS, at magnitude m; all randomness comes from `seed`.  Each op's parameter
is a function of m in PARAMETERS, with the reference's formulas (google/automl
`efficientnetv2/autoaugment.py`, `_MAX_LEVEL = 10`), so the paper's magnitudes mean what they
meant there: m = 10 is a unit, not a maximum.

The reference's uint8 quirks (Solarize's wrapping threshold, Contrast's pixel-count gray,
Posterize's clamped shift) are reproduced, not fixed: the paper's magnitudes were chosen with
them.  The op table and these behaviours are in docs/randaugment.md.
"""

import functools
import math
from typing import Callable, Dict

import tensorflow as tf

MAX_LEVEL = 10.0  # The reference's _MAX_LEVEL: the unit of m, not a maximum.
MAX_MAGNITUDE = 30.0  # The largest m `check_magnitude` accepts (the reference suggests 5-30).
FILL_VALUE = 128.0


# -- Magnitude m -> each op's parameter (the table in docs/randaugment.md). -----------------

def _level(m, scale: float) -> tf.Tensor:
    """m / 10 * scale, computed in float64 as the reference computes it in Python floats (so
    int() of it truncates at the same places)."""
    return tf.cast(m, tf.float64) / MAX_LEVEL * scale


def _truncated(m, scale: float) -> tf.Tensor:
    return tf.cast(tf.floor(_level(m, scale)), tf.float32)


def rotate_degrees(m) -> tf.Tensor:
    return tf.cast(_level(m, 30.0), tf.float32)


def posterize_bits(m) -> tf.Tensor:
    return _truncated(m, 4.0)


def solarize_threshold(m) -> tf.Tensor:
    return _truncated(m, 256.0)


def solarize_addition(m) -> tf.Tensor:
    return _truncated(m, 110.0)


def enhance_factor(m) -> tf.Tensor:
    return tf.cast(_level(m, 1.8) + 0.1, tf.float32)


def shear_amount(m) -> tf.Tensor:
    return tf.cast(_level(m, 0.3), tf.float32)


def translate_pixels(m, pixel_scale: float = 1.0) -> tf.Tensor:
    return tf.cast(_level(m, 100.0 * pixel_scale), tf.float32)


def cutout_half_size(m, pixel_scale: float = 1.0) -> tf.Tensor:
    return _truncated(m, 40.0 * pixel_scale)


PARAMETERS: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "rotate": rotate_degrees, "posterize": posterize_bits, "solarize": solarize_threshold,
    "color": enhance_factor, "contrast": enhance_factor, "brightness": enhance_factor,
    "sharpness": enhance_factor, "shear_x": shear_amount, "shear_y": shear_amount,
    "translate_x": translate_pixels, "translate_y": translate_pixels,
    "cutout": cutout_half_size, "solarize_add": solarize_addition,
}  # auto_contrast, equalize and invert take no parameter.


# -- Ops with explicit arguments. ---------------------------------------------------------------

def _clip(image: tf.Tensor) -> tf.Tensor:
    # The fused kernel: one pass over the image, where tf.clip_by_value makes two.
    return tf.raw_ops.ClipByValue(t=image, clip_value_min=tf.constant(0.0),
                                  clip_value_max=tf.constant(255.0))


def _blend(degenerate, image: tf.Tensor, factor) -> tf.Tensor:
    """(1 - factor) * degenerate + factor * image, clipped; factor 1 returns `image` exactly."""
    return _clip((1.0 - factor) * degenerate + factor * image)


_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """Stretch each channel to [0, 255] (a flat channel is unchanged): x * a + b per channel."""
    # Reducing rows, then columns, is faster on the CPU than reducing both axes at once.
    low = tf.reduce_min(tf.reduce_min(image, axis=0), axis=0)
    high = tf.reduce_max(tf.reduce_max(image, axis=0), axis=0)
    flat = high <= low
    scale = tf.where(flat, 1.0, 255.0 / tf.where(flat, 1.0, high - low))
    return _clip(image * scale - tf.where(flat, 0.0, low) * scale)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL's per-channel histogram equalization of the rounded image."""
    # Channel c's levels are counted in bins 256 c ... 256 c + 255.  bias_add is the fast add
    # along the last axis (a broadcasting add over 3 channels costs twice as much), and the raw
    # Bincount skips tf.math.bincount's extra passes (its checks and a max over the input).
    flat = tf.cast(tf.nn.bias_add(tf.round(image), tf.constant([0.0, 256.0, 512.0])), tf.int32)
    histogram = tf.reshape(tf.raw_ops.Bincount(arr=flat, size=768, weights=tf.zeros([0], tf.int32)),
                           [3, 256])
    # PIL: step = (pixels - count of the last occupied level) // 255; identity when step == 0.
    last_occupied = 255 - tf.argmax(tf.reverse(histogram > 0, axis=[1]), axis=1, output_type=tf.int32)
    last_count = tf.gather(histogram, last_occupied, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255
    cumulative = tf.cumsum(histogram, axis=1, exclusive=True)
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((cumulative + safe_step // 2) // safe_step, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.float32), flat)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255.0 - image


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """Invert (255 - x) every pixel value >= threshold mod 256 (the reference's uint8 wrap)."""
    threshold = tf.math.floormod(tf.cast(threshold, tf.float32), 256.0)
    # Select (v1): on equal shapes it skips tf.where's (SelectV2's) broadcasting work.
    return tf.raw_ops.Select(condition=image >= threshold, x=255.0 - image, y=image)


def solarize_add(image: tf.Tensor, addition, threshold=128.0) -> tf.Tensor:
    """Add `addition` to every pixel value below `threshold`, clipped to [0, 255]."""
    added = _clip(image + tf.cast(addition, tf.float32))
    return tf.raw_ops.Select(condition=image < threshold, x=added, y=image)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keep the `bits` high bits: floor(x / 2^(8 - bits)) * 2^(8 - bits).  As the reference's
    uint8 shift (TensorFlow clamps a shift to 7), 0 bits or more than 8 keep 1 bit."""
    bits = tf.cast(bits, tf.float32)
    kept = tf.where((bits >= 1.0) & (bits <= 8.0), bits, 1.0)
    step = tf.pow(2.0, 8.0 - kept)
    return tf.cond(step > 1.0, lambda: tf.floor(image / step) * step, lambda: image)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """Saturation: 0 gives grayscale, 1 the image, > 1 more saturated (PIL ImageEnhance.Color)."""
    # blend(gray, x, f) is linear in x: one 3x3 matrix, applied as a matmul over the pixels.
    gray = tf.tile(tf.constant(_GRAY_WEIGHTS)[:, None], [1, 3])
    mixing = (1.0 - factor) * gray + factor * tf.eye(3)
    return _clip(tf.reshape(tf.matmul(tf.reshape(image, [-1, 3]), mixing), tf.shape(image)))


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """The reference's Contrast: blend with a constant gray of min(floor(H * W / 256), 255).

    The reference means PIL's contrast (around the mean gray) but divides the histogram's pixel
    count by 256 where it meant the sum of level * count by the pixel count; reproduced on
    purpose (see docs/randaugment.md)."""
    shape = tf.shape(image)
    gray = tf.minimum(tf.floor(tf.cast(shape[0] * shape[1], tf.float32) / 256.0), 255.0)
    return _blend(gray, image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """Brightness: 0 gives black (PIL ImageEnhance.Brightness)."""
    return _blend(0.0, image, factor)


_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # / 13: PIL's SMOOTH filter
_CENTER = ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """Sharpness against PIL's 3x3 smoothing filter: 0 blurs, > 1 sharpens; the border pixels
    are kept, as PIL and the reference do.  Images of at least 3 x 3.

    blend(smooth, x, f) = x + (1 - f) * (smooth - x), smooth = (3x3 box sum + 4 x) / 13 (_SMOOTH).
    The box sum is summed by shifted slices, rows then columns: cheaper on the CPU than the
    equivalent depthwise convolution (its results differ in float rounding, < 1e-4)."""
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    interior = image[1:-1, 1:-1]
    change = (1.0 - factor) * ((box + 4.0 * interior) / 13.0 - interior)
    return _clip(image + tf.pad(change, [[1, 1], [1, 1], [0, 0]]))


def _source_coordinate(along_x, along_y, offset, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """round(along_x * x + along_y * y + offset), std::round (halves away from zero, where
    tf.round rounds them to even), in float32 in the order of ImageProjectiveTransformV3's kernel.
    A Python coefficient of 0 or 1 drops its product, which leaves the value unchanged and the
    result as small as its inputs ([H, 1] when it does not depend on x)."""
    terms = [v if isinstance(c, (int, float)) and c == 1 else c * v
             for c, v in ((along_x, x), (along_y, y)) if not (isinstance(c, (int, float)) and c == 0)]
    value = terms[0] + terms[1] if len(terms) == 2 else terms[0]
    if not isinstance(offset, (int, float)) or offset != 0:
        # BiasAdd, not +: in a graph, grappler's arithmetic optimizer regroups a chain of adds
        # (the scalar added to the smaller operand first), which changes the sum's rounding.
        value = tf.nn.bias_add(value[..., None], tf.reshape(tf.cast(offset, tf.float32), [1]))[..., 0]
    magnitude = tf.abs(value)
    whole = tf.floor(magnitude)
    return tf.sign(value) * tf.where(magnitude - whole >= 0.5, whole + 1.0, whole)


def _transform(image: tf.Tensor, x_row, y_row) -> tf.Tensor:
    """Affine transform: output pixel (x, y) samples the input at (a0 x + a1 y + a2,
    b0 x + b1 y + b2), (a0, a1, a2) = x_row, (b0, b1, b2) = y_row (tensors or Python numbers),
    nearest pixel, FILL_VALUE outside.

    The pixels of ImageProjectiveTransformV3 (NEAREST, CONSTANT, transform [a0, a1, a2, b0, b1,
    b2, 0, 0]), whose float32 arithmetic and rounding this repeats, but with one source index per
    pixel (not per channel), the index work of a shear on one axis only, and one gather of whole
    pixels, which is cheaper on the CPU.
    test_transform_matches_the_tensorflow_kernel holds it to the kernel's output."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    x = tf.cast(tf.range(width), tf.float32)[None, :]
    y = tf.cast(tf.range(height), tf.float32)[:, None]
    source_x, source_y = _source_coordinate(*x_row, x, y), _source_coordinate(*y_row, x, y)
    inside_x = (source_x >= 0.0) & (source_x < tf.cast(width, tf.float32))
    inside_y = (source_y >= 0.0) & (source_y < tf.cast(height, tf.float32))
    # Index height * width is the fill pixel appended after the image's.
    index = tf.where(inside_x & inside_y,
                     tf.cast(source_y, tf.int32) * width + tf.cast(source_x, tf.int32), height * width)
    pixels = tf.concat([tf.reshape(image, [-1, 3]), tf.fill([1, 3], FILL_VALUE)], axis=0)
    out = tf.gather(pixels, index)
    out.set_shape(image.shape)
    return out


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
    """Rotate by `degrees` about the image center."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0
    return _transform(image, (cos, -sin, cx - cos * cx + sin * cy),
                      (sin, cos, cy - sin * cx - cos * cy))


def shear_x(image: tf.Tensor, shear) -> tf.Tensor:
    """Output (x, y) samples the input at (x + shear * y, y): a shear about the top-left corner."""
    return _transform(image, (1, tf.cast(shear, tf.float32), 0), (0, 1, 0))


def shear_y(image: tf.Tensor, shear) -> tf.Tensor:
    """Output (x, y) samples the input at (x, y + shear * x)."""
    return _transform(image, (1, 0, 0), (tf.cast(shear, tf.float32), 1, 0))


def _shift(image: tf.Tensor, pixels, axis: int) -> tf.Tensor:
    """Output index i samples the input at i + pixels along `axis` (pixels rounded half up, as
    nearest sampling rounds), FILL_VALUE outside: a pad and a slice, far cheaper than a general
    transform."""
    size = tf.shape(image)[axis]
    offset = tf.cast(tf.floor(tf.cast(pixels, tf.float32) + 0.5), tf.int32)
    offset = tf.clip_by_value(offset, -size, size)
    before, after = tf.maximum(-offset, 0), tf.maximum(offset, 0)
    paddings = tf.tensor_scatter_nd_update(tf.zeros([3, 2], tf.int32), [[axis]], [[before, after]])
    padded = tf.pad(image, paddings, constant_values=FILL_VALUE)
    begin = tf.tensor_scatter_nd_update(tf.zeros([3], tf.int32), [[axis]], [after])
    shifted = tf.slice(padded, begin, tf.shape(image))
    shifted.set_shape(image.shape)
    return shifted


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
    """Output column x samples the input at x + pixels (content moves left when positive)."""
    return _shift(image, pixels, axis=1)


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
    """Output row y samples the input at y + pixels (content moves up when positive)."""
    return _shift(image, pixels, axis=0)


def cutout(image: tf.Tensor, half_size, seed: tf.Tensor) -> tf.Tensor:
    """Fill rows and columns [c - half_size, c + half_size) with FILL_VALUE, the center c drawn
    uniformly over the pixels from `seed`; half_size 0 changes nothing."""
    shape = tf.shape(image)
    center = tf.cast(tf.floor(tf.random.stateless_uniform([2], seed) *
                              tf.cast(shape[:2], tf.float32)), tf.int32)
    half_size = tf.cast(half_size, tf.int32)
    top, left = tf.unstack(tf.maximum(center - half_size, 0))
    bottom, right = tf.unstack(tf.minimum(center + half_size, shape[:2]))
    # Slices and concatenations: one copy of the image, where a broadcast select costs two.
    band = image[top:bottom]
    band = tf.concat([band[:, :left], tf.fill([bottom - top, right - left, 3], FILL_VALUE),
                      band[:, right:]], axis=1)
    out = tf.concat([image[:top], band, image[bottom:]], axis=0)
    out.set_shape(image.shape)
    return out


# -- The op table. --------------------------------------------------------------------------------

def _sign(seed):
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


AugmentFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]  # (image, m, seed) -> image


def _augmentations(pixel_scale: float = 1.0) -> Dict[str, AugmentFn]:
    """The 16 ops in the reference's order; translate and cutout at `pixel_scale` x its pixels."""
    return {
        "auto_contrast": lambda image, m, seed: auto_contrast(image),
        "equalize": lambda image, m, seed: equalize(image),
        "invert": lambda image, m, seed: invert(image),
        "rotate": lambda image, m, seed: rotate(image, _sign(seed) * rotate_degrees(m)),
        "posterize": lambda image, m, seed: posterize(image, posterize_bits(m)),
        "solarize": lambda image, m, seed: solarize(image, solarize_threshold(m)),
        "color": lambda image, m, seed: color(image, enhance_factor(m)),
        "contrast": lambda image, m, seed: contrast(image, enhance_factor(m)),
        "brightness": lambda image, m, seed: brightness(image, enhance_factor(m)),
        "sharpness": lambda image, m, seed: sharpness(image, enhance_factor(m)),
        "shear_x": lambda image, m, seed: shear_x(image, _sign(seed) * shear_amount(m)),
        "shear_y": lambda image, m, seed: shear_y(image, _sign(seed) * shear_amount(m)),
        "translate_x": lambda image, m, seed: translate_x(image, _sign(seed) * translate_pixels(m, pixel_scale)),
        "translate_y": lambda image, m, seed: translate_y(image, _sign(seed) * translate_pixels(m, pixel_scale)),
        "cutout": lambda image, m, seed: cutout(image, cutout_half_size(m, pixel_scale), seed),
        "solarize_add": lambda image, m, seed: solarize_add(image, solarize_addition(m)),
    }


AUGMENTATIONS: Dict[str, AugmentFn] = _augmentations()


def check_magnitude(magnitude) -> None:
    """ValueError unless a Python number magnitude is in [0, MAX_MAGNITUDE] (tensors pass)."""
    if isinstance(magnitude, (int, float)) and not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaug_magnitude={magnitude!r} is outside [0, {MAX_MAGNITUDE:g}]")


def augment(image: tf.Tensor, name: str, magnitude, seed: tf.Tensor) -> tf.Tensor:
    """Apply the RandAugment op `name` at `magnitude` (random sign or position from `seed`)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](tf.convert_to_tensor(image, tf.float32),
                               tf.cast(magnitude, tf.float32), seed)


def check_pixel_scale(pixel_scale) -> None:
    """ValueError unless `pixel_scale` is a number > 0."""
    if not isinstance(pixel_scale, (int, float)) or not pixel_scale > 0:
        raise ValueError(f"randaug_pixel_scale={pixel_scale!r} must be a number > 0")


def randaugment(image: tf.Tensor, seed: tf.Tensor, magnitude, num_layers: int = 2,
                pixel_scale: float = 1.0) -> tf.Tensor:
    """`num_layers` ops chosen uniformly from AUGMENTATIONS, each at `magnitude`.

    `pixel_scale` scales the two ops whose parameters are absolute pixels (translate, cutout), for
    images scaled from the reference's sizes: 1 is the reference's units; a run at the paper's sizes
    times k (e.g. 56 -> 128 px for S's 128 -> 300) keeps those ops' share of the image with k.

    The policy is one `tf.function` per (num_layers, pixel_scale), traced once per image shape in
    this process: a pipeline built again (every epoch, every run of a test session) calls the traced
    graph of 16 ops instead of building it again.
    """
    check_magnitude(magnitude)
    check_pixel_scale(pixel_scale)
    return _policy(int(num_layers), float(pixel_scale))(
        tf.convert_to_tensor(image, tf.float32), tf.cast(seed, tf.int64), tf.cast(magnitude, tf.float32))


@functools.cache
def _policy(num_layers: int, pixel_scale: float) -> Callable:
    ops = list(_augmentations(pixel_scale).values())

    def policy(image, seed, m):
        def layer(index, image):  # A loop, not unrolled: the 16 ops are traced once, not per layer.
            choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, index), 2))
            choice = tf.random.stateless_uniform([], choice_seed, 0, len(ops), dtype=tf.int32)
            image = tf.switch_case(choice, [lambda op=op: op(image, m, op_seed) for op in ops])
            return index + 1, tf.ensure_shape(image, image.shape)

        _, image = tf.while_loop(lambda index, _: index < num_layers, layer, [0, image])
        return image

    return tf.function(policy, autograph=False)
