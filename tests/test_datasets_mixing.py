"""datasets/mixing.py: mixup and CutMix on batches, eagerly and inside Dataset.map."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import mixing
from tests.datasets_helpers import eager_and_mapped, smooth_image

SEED = np.array([1, 2], np.int64)
IMAGES = np.stack([smooth_image(i, 16, 16) for i in range(6)]).astype(np.float32)
LABELS = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]


def test_beta_samples_are_in_unit_interval_with_the_right_mean():
    samples = mixing.sample_beta(tf.constant([0, 1], tf.int64), 0.2, [4000]).numpy()
    assert samples.min() >= 0 and samples.max() <= 1
    assert abs(samples.mean() - 0.5) < 0.05
    assert np.mean((samples < 0.1) | (samples > 0.9)) > 0.5  # alpha 0.2: mostly near 0 or 1.


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "both"])
def test_mixed_labels_sum_to_one_and_shapes_hold(mix):
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0)}[mix]
    images, labels = eager_and_mapped(lambda x, y, s: mixing.mix_batch(x, y, s, *alphas),
                                      IMAGES, LABELS, SEED)
    assert images.shape == IMAGES.shape and labels.shape == LABELS.shape
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert images.min() >= 0 and images.max() <= 255
    assert not np.allclose(labels, LABELS)


def test_alpha_zero_changes_nothing():
    images, labels = mixing.mix_batch(IMAGES, LABELS, SEED, 0.0, 0.0)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, LABELS)


def test_negative_alpha_is_an_error():
    with pytest.raises(ValueError, match="mixup_alpha=-1"):
        mixing.mix_batch(IMAGES, LABELS, SEED, -1.0, 0.0)


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    images, labels = (t.numpy() for t in mixing.mixup(IMAGES, LABELS, SEED, 0.4))
    for i in range(len(IMAGES)):
        j = len(IMAGES) - 1 - i
        # images[i] = w * IMAGES[i] + (1 - w) * IMAGES[j]: solve for w by least squares.
        a, b = (IMAGES[i] - IMAGES[j]).ravel(), (images[i] - IMAGES[j]).ravel()
        w = a @ b / (a @ a)
        np.testing.assert_allclose(images[i], w * IMAGES[i] + (1 - w) * IMAGES[j], atol=1e-2)
        np.testing.assert_allclose(labels[i], w * LABELS[i] + (1 - w) * LABELS[j], atol=1e-4)


def test_cutmix_pastes_one_box_and_weights_labels_by_area():
    images, labels = (t.numpy() for t in mixing.cutmix(IMAGES, LABELS, SEED, 1.0))
    for i in range(len(IMAGES)):
        j = len(IMAGES) - 1 - i
        pasted = np.all(images[i] == IMAGES[j], axis=-1)
        rows, cols = np.nonzero(pasted)
        kept = 1.0 - pasted.mean()
        if rows.size:  # The pasted region is a rectangle.
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        np.testing.assert_allclose(labels[i], kept * LABELS[i] + (1 - kept) * LABELS[j], atol=1e-5)


def test_mixing_is_deterministic_per_seed():
    first = mixing.mix_batch(IMAGES, LABELS, SEED, 0.4, 1.0)
    again = mixing.mix_batch(IMAGES, LABELS, SEED, 0.4, 1.0)
    other = mixing.mix_batch(IMAGES, LABELS, np.array([7, 7], np.int64), 0.4, 1.0)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])


def _reference_mixup(images, lam):
    """The formula, on the whole batch at once: x + (1 - lam) (x_reversed - x)."""
    weights = (1.0 - lam)[:, None, None, None]
    return images + weights * (tf.reverse(images, axis=[0]) - images)


@pytest.mark.parametrize("batch", [1, 6, 9])
def test_a_mixup_plan_applied_is_the_whole_batch_formula_exactly(batch):
    """`plan` on the host, `apply` where the images are (the train step): mixup's images are
    x + (1 - lam) (x_reversed - x), bit for bit, eagerly and in a graph."""
    images = tf.constant(np.random.default_rng(batch).uniform(0, 255, [batch, 5, 4, 3]), tf.float32)
    labels = LABELS[:1].repeat(batch, 0)
    mix, mixed_labels = mixing.plan(labels, SEED, (5, 4), mixup_alpha=0.4)
    lam = 1.0 - mix[:, 0]
    np.testing.assert_array_equal(mix[:, 1:], np.tile([0, 5, 0, 4], [batch, 1]))
    expected = _reference_mixup(images, lam).numpy()
    np.testing.assert_array_equal(mixing.apply(images, mix), expected)
    np.testing.assert_array_equal(tf.function(mixing.apply)(images, mix), expected)
    np.testing.assert_allclose(mixed_labels, labels, atol=1e-6)  # One class: mixing keeps it.


def test_no_plan_when_both_alphas_are_zero():
    mix, labels = mixing.plan(LABELS, SEED, (16, 16))
    assert mix is None and labels is LABELS
    images = tf.constant(IMAGES.astype(np.uint8))
    np.testing.assert_array_equal(mixing.mixed_images(images), IMAGES.astype(np.uint8))
    assert mixing.mixed_images(images).dtype == tf.float32
