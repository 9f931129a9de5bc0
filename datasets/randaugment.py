"""RandAugment (Cubuk et al., 2020) as stateless graph-mode TensorFlow ops.

`randaugment(image, seed, magnitude, num_layers)` applies `num_layers` ops, each drawn uniformly
(with replacement) from the 14 below and always applied, at strength `magnitude` (m, 0-30).
Images are float32 [H, W, 3] in [0, 255] and stay in that range (ops that can overshoot clip).
All randomness (op choice, sign) comes from `seed`, so the same seed gives the same image.

The magnitude scale is the paper's (EfficientNetV2 trains S with m 5 -> 15, L up to 25): m = 10
is AutoAugment's full range for the open-ended ops, which grow linearly beyond it; ops with a
natural end reach it at m = MAX_MAGNITUDE = 30 (f = m / 30). m = 0 leaves every op the identity.
"+-" is a random sign.

| op            | at magnitude m                                   | m = 5      | m = 15     |
|---------------|--------------------------------------------------|------------|------------|
| identity      | no change                                        |            |            |
| auto_contrast | blend(image, per-channel min-max stretch, f)     | 17 %       | 50 %       |
| equalize      | blend(image, per-channel histogram equalize, f)  | 17 %       | 50 %       |
| rotate        | +-3 m degrees about the center                   | +-15 deg   | +-45 deg   |
| solarize      | invert pixels >= 256 (1 - f)                     | >= 213     | >= 128     |
| color         | saturation factor max(0, 1 +- 0.09 m)            | 0.55/1.45  | 0/2.35     |
| posterize     | drop round(4 f) low bits                         | 1 bit      | 2 bits     |
| contrast      | contrast factor max(0, 1 +- 0.09 m)              | 0.55/1.45  | 0/2.35     |
| brightness    | brightness factor max(0, 1 +- 0.09 m)            | 0.55/1.45  | 0/2.35     |
| sharpness     | sharpness factor max(0, 1 +- 0.09 m) (PIL's)     | 0.55/1.45  | 0/2.35     |
| shear_x/y     | shear +-0.03 m about the center                  | +-0.15     | +-0.45     |
| translate_x/y | shift +-min(0.045 m, 1) of the width/height      | +-22 %     | +-67 %     |

Geometric ops fill uncovered pixels with gray 128 and sample the nearest pixel (as the reference;
bilinear sampling costs twice as much); translations are rounded to whole pixels.  Translation is
a fraction of the image (the reference's 100 px at m = 10 on 224 px images), so small
early-stage images are not shifted harder than large ones.
"""

import math
from typing import Callable, Dict

import tensorflow as tf

MAX_MAGNITUDE = 30.0
FILL_VALUE = 128.0


# -- Ops with explicit arguments. ---------------------------------------------------------------

def _clip(image: tf.Tensor) -> tf.Tensor:
    # The fused kernel: one pass over the image, where tf.clip_by_value makes two.
    return tf.raw_ops.ClipByValue(t=image, clip_value_min=tf.constant(0.0),
                                  clip_value_max=tf.constant(255.0))


def _blend(degenerate, image: tf.Tensor, factor) -> tf.Tensor:
    """(1 - factor) * degenerate + factor * image, clipped; factor 1 returns `image` exactly."""
    return _clip((1.0 - factor) * degenerate + factor * image)


_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's


def auto_contrast(image: tf.Tensor, strength=1.0) -> tf.Tensor:
    """Stretch each channel to [0, 255] (unchanged when flat); blended in by `strength`.

    The blend of x and (x - low) * scale is one affine map per channel: x * a + b.
    """
    # Reducing rows, then columns, is several times faster than reducing both axes at once.
    low = tf.reduce_min(tf.reduce_min(image, axis=0), axis=0)
    high = tf.reduce_max(tf.reduce_max(image, axis=0), axis=0)
    flat = high <= low
    scale = tf.where(flat, 1.0, 255.0 / tf.where(flat, 1.0, high - low))
    offset = tf.where(flat, 0.0, low)
    return image * ((1.0 - strength) + strength * scale) - strength * offset * scale


def equalize(image: tf.Tensor, strength=1.0) -> tf.Tensor:
    """PIL's per-channel histogram equalization of the rounded image; blended in by `strength`."""
    levels = tf.cast(tf.round(image), tf.int32)  # The image is in [0, 255].
    flat = tf.reshape(levels, [-1, 3]) + tf.range(3) * 256
    histogram = tf.reshape(tf.math.bincount(tf.reshape(flat, [-1]), minlength=768, maxlength=768),
                           [3, 256])
    # PIL: step = (pixels - count of the last occupied level) // 255; identity when step == 0.
    last_occupied = 255 - tf.argmax(tf.reverse(histogram > 0, axis=[1]), axis=1, output_type=tf.int32)
    last_count = tf.gather(histogram, last_occupied, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255
    cumulative = tf.cumsum(histogram, axis=1, exclusive=True)
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((cumulative + safe_step // 2) // safe_step, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    # Blending with the LUT itself (256 entries) is cheaper than blending the images.
    blended = (1.0 - strength) * tf.range(256, dtype=tf.float32)[None, :] + strength * tf.cast(lut, tf.float32)
    return tf.reshape(tf.gather(tf.reshape(blended, [-1]), flat), tf.shape(image))


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """Invert (255 - x) every pixel value >= threshold."""
    # Select (v1) is about three times faster than tf.where's SelectV2 on equal shapes.
    return tf.raw_ops.Select(condition=image >= threshold, x=255.0 - image, y=image)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keep 8 - `bits` high bits: floor(x / 2^bits) * 2^bits; bits == 0 changes nothing."""
    bits = tf.cast(bits, tf.float32)
    step = tf.pow(2.0, bits)
    return tf.cond(bits > 0, lambda: tf.floor(image / step) * step, lambda: image)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """Saturation: 0 gives grayscale, 1 the image, > 1 more saturated (PIL ImageEnhance.Color)."""
    # blend(gray, x, f) is linear in x: one 3x3 matrix, applied as a matmul over the pixels.
    gray = tf.tile(tf.constant(_GRAY_WEIGHTS)[:, None], [1, 3])
    mixing = (1.0 - factor) * gray + factor * tf.eye(3)
    return _clip(tf.reshape(tf.matmul(tf.reshape(image, [-1, 3]), mixing), tf.shape(image)))


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """Contrast around the mean gray level (PIL ImageEnhance.Contrast)."""
    channel_means = tf.reduce_mean(tf.reduce_mean(image, axis=0), axis=0)
    mean_gray = tf.tensordot(channel_means, tf.constant(_GRAY_WEIGHTS), 1)
    return _blend(mean_gray, image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """Brightness: 0 gives black (PIL ImageEnhance.Brightness)."""
    return _blend(0.0, image, factor)


_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # / 13: PIL's SMOOTH filter


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """Sharpness against PIL's 3x3 smoothing filter: 0 blurs, > 1 sharpens.  (PIL keeps the
    border pixels; here the filter sees the image mirrored at the border.)"""
    kernel = tf.tile(tf.constant(_SMOOTH)[:, :, None, None] / 13.0, [1, 1, 3, 1])
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="REFLECT")
    smooth = tf.nn.depthwise_conv2d(padded[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    return _blend(smooth, image, factor)


def _transform(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Projective transform; output pixel (x, y) samples the input at transform(x, y)."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform, tf.float32)[None],
        output_shape=shape[:2], fill_value=FILL_VALUE, interpolation="NEAREST",
        fill_mode="CONSTANT")[0]
    out.set_shape(image.shape)
    return out


def _center(image: tf.Tensor):
    shape = tf.cast(tf.shape(image), tf.float32)
    return (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
    """Rotate by `degrees` about the image center."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    cx, cy = _center(image)
    return _transform(image, tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                                       sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]))


def shear_x(image: tf.Tensor, shear) -> tf.Tensor:
    """x += shear * (y - center_y)."""
    shear = tf.cast(shear, tf.float32)
    _, cy = _center(image)
    return _transform(image, tf.stack([1.0, shear, -shear * cy, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image: tf.Tensor, shear) -> tf.Tensor:
    """y += shear * (x - center_x)."""
    shear = tf.cast(shear, tf.float32)
    cx, _ = _center(image)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, -shear * cx, 0.0, 0.0]))


def _shift(image: tf.Tensor, pixels, axis: int) -> tf.Tensor:
    """Shift by round(pixels) along `axis` (towards higher indices when positive), filling with
    FILL_VALUE: a pad and a slice, far cheaper than a general transform."""
    size = tf.shape(image)[axis]
    pixels = tf.clip_by_value(tf.cast(tf.round(pixels), tf.int32), -size, size)
    before, after = tf.maximum(pixels, 0), tf.maximum(-pixels, 0)
    paddings = tf.tensor_scatter_nd_update(tf.zeros([3, 2], tf.int32), [[axis]], [[before, after]])
    padded = tf.pad(image, paddings, constant_values=FILL_VALUE)
    begin = tf.tensor_scatter_nd_update(tf.zeros([3], tf.int32), [[axis]], [after])
    shifted = tf.slice(padded, begin, tf.shape(image))
    shifted.set_shape(image.shape)
    return shifted


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
    """Shift right by `pixels`, rounded (left when negative)."""
    return _shift(image, pixels, axis=1)


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
    """Shift down by `pixels`, rounded (up when negative)."""
    return _shift(image, pixels, axis=0)


# -- Magnitude m -> arguments (the table in the module docstring). ------------------------------

def _fraction(m):
    return tf.minimum(m, MAX_MAGNITUDE) / MAX_MAGNITUDE


def _sign(seed):
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


def _factor(m, seed):
    return tf.maximum(0.0, 1.0 + _sign(seed) * 0.09 * m)


def _translation(m, seed, size):
    return _sign(seed) * tf.minimum(0.045 * m, 1.0) * tf.cast(size, tf.float32)


AugmentFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]  # (image, m, seed) -> image

AUGMENTATIONS: Dict[str, AugmentFn] = {
    "identity": lambda image, m, seed: image,
    "auto_contrast": lambda image, m, seed: auto_contrast(image, _fraction(m)),
    "equalize": lambda image, m, seed: equalize(image, _fraction(m)),
    "rotate": lambda image, m, seed: rotate(image, _sign(seed) * 3.0 * m),
    "solarize": lambda image, m, seed: solarize(image, 256.0 * (1.0 - _fraction(m))),
    "color": lambda image, m, seed: color(image, _factor(m, seed)),
    "posterize": lambda image, m, seed: posterize(image, tf.round(4.0 * _fraction(m))),
    "contrast": lambda image, m, seed: contrast(image, _factor(m, seed)),
    "brightness": lambda image, m, seed: brightness(image, _factor(m, seed)),
    "sharpness": lambda image, m, seed: sharpness(image, _factor(m, seed)),
    "shear_x": lambda image, m, seed: shear_x(image, _sign(seed) * 0.03 * m),
    "shear_y": lambda image, m, seed: shear_y(image, _sign(seed) * 0.03 * m),
    "translate_x": lambda image, m, seed: translate_x(image, _translation(m, seed, tf.shape(image)[1])),
    "translate_y": lambda image, m, seed: translate_y(image, _translation(m, seed, tf.shape(image)[0])),
}


def check_magnitude(magnitude) -> None:
    """ValueError unless a Python number magnitude is in [0, MAX_MAGNITUDE] (tensors pass)."""
    if isinstance(magnitude, (int, float)) and not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaug_magnitude={magnitude!r} is outside [0, {MAX_MAGNITUDE:g}]")


def augment(image: tf.Tensor, name: str, magnitude, seed: tf.Tensor) -> tf.Tensor:
    """Apply the RandAugment op `name` at `magnitude` (random sign from `seed`)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](image, tf.cast(magnitude, tf.float32), seed)


def randaugment(image: tf.Tensor, seed: tf.Tensor, magnitude, num_layers: int = 2) -> tf.Tensor:
    """`num_layers` ops chosen uniformly from AUGMENTATIONS, each at `magnitude`."""
    check_magnitude(magnitude)
    m = tf.cast(magnitude, tf.float32)
    ops = list(AUGMENTATIONS.values())

    def layer(index, image):  # A loop, not unrolled: the 14 ops are traced once, not per layer.
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, index), 2))
        choice = tf.random.stateless_uniform([], choice_seed, 0, len(ops), dtype=tf.int32)
        image = tf.switch_case(choice, [lambda op=op: op(image, m, op_seed) for op in ops])
        return index + 1, tf.ensure_shape(image, image_shape)

    image = tf.convert_to_tensor(image, tf.float32)
    image_shape = image.shape
    _, image = tf.while_loop(lambda index, _: index < num_layers, layer, [0, image])
    return image
