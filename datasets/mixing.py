"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on batches, statelessly seeded.

Both pair each example i with example B-1-i of the same batch (the batch reversed, as in the
reference) and draw one mixing weight per example, lam ~ Beta(alpha, alpha).  Labels are mixed
with the same weights, so one-hot rows stay summing to 1.  alpha = 0 turns an op off.  With both
alphas > 0, each batch gets one or the other with probability 1/2.
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


_PAIRS_PER_CHUNK = 4  # At 300 px, 8 images (9 MB) of temporaries per chunk.


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float,
          in_place: bool = False):
    """images [B, H, W, C], labels [B, K] -> lam * x + (1 - lam) * x_reversed, same for labels.

    `in_place=True` may write the result into the buffer of `images` (see `_mix_images_in_place`;
    the same values): only for a batch that nothing else in the graph reads, as the input
    pipeline's batches."""
    lam = sample_beta(seed, alpha, tf.shape(images)[:1])
    mix = _mix_images_in_place if in_place and images.shape[0] is not None else _mix_images
    return mix(images, lam), _mix_labels(labels, lam)


def _mix_images(images: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    """Row i -> x_i + (1 - lam_i) (x_(B-1-i) - x_i): the convex combination up to float rounding.
    x + (1 - lam) * (x_reversed - x): the reversal is the only new batch-sized buffer, the rest is
    computed in place (lam * x + ... would allocate a second one)."""
    weights = lam[:, None, None, None]
    return images + (1.0 - weights) * (tf.reverse(images, axis=[0]) - images)


def _mix_images_in_place(images: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    """`_mix_images`, the same values, with no new batch-sized buffer when nothing else holds
    `images`' buffer (static batch size).

    Pairs (i, B-1-i) are mixed a few at a time and written back with InplaceUpdate into the buffer
    that Snapshot takes over from `images` (or copies, when it is shared at run time).  At 300 px a
    batch of 64 is 69 MB, which the malloc behind TensorFlow's CPU allocator maps afresh each
    time: its page faults cost more CPU than the arithmetic.  InplaceUpdate writes into its input
    without checking who else holds it, so each chunk reads the previous chunk's output (rows not
    yet written), which has no other reader; and a graph that reads `images` elsewhere must not
    use this (grappler may turn that read, e.g. images + 0, into a Snapshot that shares the
    buffer: test_mixup_leaves_a_batch_that_is_still_held_unchanged)."""
    batch = images.shape[0]
    weights = (1.0 - lam)[:, None, None, None]
    mixed = tf.raw_ops.Snapshot(input=images)
    # A middle row (odd B) pairs with itself and stays x exactly.
    for start in range(0, batch // 2, _PAIRS_PER_CHUNK):
        end = min(start + _PAIRS_PER_CHUNK, batch // 2)
        top = mixed[start:end]
        bottom = tf.reverse(mixed[batch - end:batch - start], axis=[0])  # rows B-1-start, ...
        bottom_weights = tf.reverse(weights[batch - end:batch - start], axis=[0])
        rows = list(range(start, end)) + [batch - 1 - i for i in range(start, end)]
        mixed = tf.raw_ops.InplaceUpdate(
            x=mixed, i=rows, v=tf.concat([top + weights[start:end] * (bottom - top),
                                          bottom + bottom_weights * (top - bottom)], axis=0))
    return mixed


def cutmix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float):
    """Paste a box of about (1 - lam) of the area from the reversed batch; labels mixed by the
    area actually kept (the box is clipped at the border)."""
    beta_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    lam = sample_beta(beta_seed, alpha, [batch])
    side = tf.sqrt(1.0 - lam)
    center_y = tf.random.stateless_uniform([batch], y_seed) * h
    center_x = tf.random.stateless_uniform([batch], x_seed) * w
    y0 = tf.clip_by_value(tf.round(center_y - side * h / 2), 0.0, h)
    y1 = tf.clip_by_value(tf.round(center_y + side * h / 2), 0.0, h)
    x0 = tf.clip_by_value(tf.round(center_x - side * w / 2), 0.0, w)
    x1 = tf.clip_by_value(tf.round(center_x + side * w / 2), 0.0, w)
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = tf.cast((rows >= y0[:, None]) & (rows < y1[:, None]), images.dtype)
    in_cols = tf.cast((cols >= x0[:, None]) & (cols < x1[:, None]), images.dtype)
    box = in_rows[:, :, None, None] * in_cols[:, None, :, None]  # [B, H, W, 1]
    images = (1.0 - box) * images + box * tf.reverse(images, axis=[0])
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return images, _mix_labels(labels, kept)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, in_place: bool = False):
    """Mixup, CutMix, or (both alphas > 0) one of them chosen per batch; no-op when both are 0.
    `in_place`: see `mixup`."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{name}={alpha!r} must be >= 0 (0 turns it off)")
    choice_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_mixup = tf.random.stateless_uniform([], choice_seed) < 0.5
        return tf.cond(use_mixup,
                       lambda: mixup(images, labels, mix_seed, mixup_alpha, in_place),
                       lambda: cutmix(images, labels, mix_seed, cutmix_alpha))
    if mixup_alpha > 0:
        return mixup(images, labels, mix_seed, mixup_alpha, in_place)
    if cutmix_alpha > 0:
        return cutmix(images, labels, mix_seed, cutmix_alpha)
    return images, labels
