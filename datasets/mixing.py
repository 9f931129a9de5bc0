"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on batches, statelessly seeded.

Both pair each example i with example B-1-i of the same batch (the batch reversed, as in the
reference) and draw one mixing weight per example, lam ~ Beta(alpha, alpha).  Labels are mixed
with the same weights, so one-hot rows stay summing to 1.  alpha = 0 turns an op off.  With both
alphas > 0, each batch gets one or the other with probability 1/2.

Both are one formula, x + w * region * (x_reversed - x): mixup with w = 1 - lam over the whole
image, CutMix with w = 1 inside a box.  So a batch's mixing is five numbers per example
(`plan`: w and the region's rows and columns), drawn where the batch is built, and `apply` mixes
the images wherever they are.  The input pipeline draws the plan and mixes the labels on the host,
and hands over the images unmixed (uint8, a quarter of float32's bytes); the trainer's train step
casts and mixes them on the device, instead of host CPU per image and a float buffer per batch
in the pipeline.  `mix_batch` does both at once, for callers that want mixed images.
"""

import tensorflow as tf


def sample_beta(seed: tf.Tensor, alpha, shape) -> tf.Tensor:
    """Beta(alpha, alpha) samples as g1 / (g1 + g2) of two stateless Gamma(alpha) draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    g1 = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    total = g1 + g2
    # For small alpha both draws can underflow to 0; call that an even mix.
    return tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5)


def _mix_labels(labels: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    return lam[:, None] * labels + (1.0 - lam[:, None]) * tf.reverse(labels, axis=[0])


def _mixup_plan(labels: tf.Tensor, seed: tf.Tensor, alpha: float, height, width):
    lam = sample_beta(seed, alpha, tf.shape(labels)[:1])
    zeros = tf.zeros_like(lam)
    h, w = tf.fill(tf.shape(lam), height), tf.fill(tf.shape(lam), width)
    return tf.stack([1.0 - lam, zeros, h, zeros, w], axis=1), _mix_labels(labels, lam)


def _cutmix_plan(labels: tf.Tensor, seed: tf.Tensor, alpha: float, height, width):
    """A box of about (1 - lam) of the area; labels mixed by the area actually pasted (the box is
    clipped at the border)."""
    beta_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch = tf.shape(labels)[:1]
    lam = sample_beta(beta_seed, alpha, batch)
    side = tf.sqrt(1.0 - lam)
    center_y = tf.random.stateless_uniform(batch, y_seed) * height
    center_x = tf.random.stateless_uniform(batch, x_seed) * width
    y0 = tf.clip_by_value(tf.round(center_y - side * height / 2), 0.0, height)
    y1 = tf.clip_by_value(tf.round(center_y + side * height / 2), 0.0, height)
    x0 = tf.clip_by_value(tf.round(center_x - side * width / 2), 0.0, width)
    x1 = tf.clip_by_value(tf.round(center_x + side * width / 2), 0.0, width)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return tf.stack([tf.ones_like(lam), y0, y1, x0, x1], axis=1), _mix_labels(labels, kept)


def plan(labels: tf.Tensor, seed: tf.Tensor, image_shape, mixup_alpha: float = 0.0,
         cutmix_alpha: float = 0.0):
    """A batch's mixing, without its images: (mix float32 [B, 5], mixed labels [B, K]).

    Row i of `mix` is (w, top, bottom, left, right): rows [top, bottom) and columns [left, right)
    of image i take w of image B-1-i (`apply`).  `image_shape`: the images' (height, width).
    Mixup, CutMix, or (both alphas > 0) one of them chosen per batch; None when both are 0."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{name}={alpha!r} must be >= 0 (0 turns it off)")
    if not (mixup_alpha > 0 or cutmix_alpha > 0):
        return None, labels
    height, width = tf.cast(image_shape[0], tf.float32), tf.cast(image_shape[1], tf.float32)
    choice_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    mixup = lambda: _mixup_plan(labels, mix_seed, mixup_alpha, height, width)  # noqa: E731
    cutmix = lambda: _cutmix_plan(labels, mix_seed, cutmix_alpha, height, width)  # noqa: E731
    if mixup_alpha > 0 and cutmix_alpha > 0:
        return tf.cond(tf.random.stateless_uniform([], choice_seed) < 0.5, mixup, cutmix)
    return mixup() if mixup_alpha > 0 else cutmix()


def apply(images: tf.Tensor, mix: tf.Tensor) -> tf.Tensor:
    """images float [B, H, W, C] mixed by `plan`'s `mix` [B, 5]: x + w * region * (x_reversed - x).

    Mixup's weight is exactly w (the region's factor is 1.0), so its images are the convex
    combination up to float rounding; CutMix's region pixels are exactly the partner's for images
    of whole numbers (x + (y - x) = y in float32), as the pipeline's uint8 images are."""
    shape = tf.shape(images)
    w, top, bottom, left, right = tf.unstack(tf.cast(mix, images.dtype), axis=1)
    rows = tf.cast(tf.range(shape[1]), images.dtype)[None, :]
    cols = tf.cast(tf.range(shape[2]), images.dtype)[None, :]
    in_rows = tf.cast((rows >= top[:, None]) & (rows < bottom[:, None]), images.dtype)
    in_cols = tf.cast((cols >= left[:, None]) & (cols < right[:, None]), images.dtype)
    weights = w[:, None, None, None] * in_rows[:, :, None, None] * in_cols[:, None, :, None]
    return images + weights * (tf.reverse(images, axis=[0]) - images)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """`plan` and `apply` at once: (mixed float images, mixed labels); no-op when both alphas
    are 0."""
    images = tf.convert_to_tensor(images)
    mix, labels = plan(labels, seed, tf.shape(images)[1:3], mixup_alpha, cutmix_alpha)
    if mix is None:
        return images, labels
    return apply(tf.cast(images, tf.float32), mix), labels


def _planned(plan_fn, images, labels, seed, alpha):
    images = tf.cast(images, tf.float32)
    shape = tf.cast(tf.shape(images), tf.float32)
    mix, labels = plan_fn(labels, seed, alpha, shape[1], shape[2])
    return apply(images, mix), labels


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float):
    """images [B, H, W, C], labels [B, K] -> lam * x + (1 - lam) * x_reversed, same for labels
    (lam ~ Beta(alpha, alpha) drawn from `seed` itself)."""
    return _planned(_mixup_plan, images, labels, seed, alpha)


def cutmix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float):
    """Paste a box of about (1 - lam) of the area from the reversed batch."""
    return _planned(_cutmix_plan, images, labels, seed, alpha)


def mixed_images(x) -> tf.Tensor:
    """A training batch's first element (`datasets.build_train_dataset`: images, or (images, mix)
    with mixing on) -> float32 images, mixed: what the model trains on."""
    if isinstance(x, (tuple, list)):
        images, mix = x
        return apply(tf.cast(images, tf.float32), mix)
    return tf.cast(x, tf.float32)
