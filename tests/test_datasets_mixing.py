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


@pytest.mark.parametrize("batch", [1, 6, 9, 19])  # 19: 9 pairs in three chunks and a middle row.
def test_mixup_in_place_equals_the_whole_batch_formula_exactly(batch):
    images = tf.constant(np.random.default_rng(batch).uniform(0, 255, [batch, 5, 4, 3]), tf.float32)
    lam = mixing.sample_beta(SEED, 0.4, [batch])
    expected = _reference_mixup(images, lam).numpy()
    held = images.numpy()
    np.testing.assert_array_equal(mixing._mix_images_in_place(images, lam), expected)
    np.testing.assert_array_equal(images, held)  # Held by this test: copied, not written over.
    mapped = tf.data.Dataset.from_tensors(images).map(
        lambda x: mixing.mixup(x, LABELS[:1].repeat(batch, 0), SEED, 0.4, in_place=True)[0])
    np.testing.assert_array_equal(next(iter(mapped)), expected)
    unknown_batch = tf.function(lambda x: mixing.mixup(x, LABELS[:1].repeat(batch, 0), SEED, 0.4,
                                                       in_place=True)[0],
                                input_signature=[tf.TensorSpec([None, 5, 4, 3], tf.float32)])
    np.testing.assert_array_equal(unknown_batch(images), expected)


def test_mixup_leaves_a_batch_that_is_still_held_unchanged():
    images = tf.constant(IMAGES)

    @tf.function
    def mixed_and_original(x):
        mixed, _ = mixing.mixup(x, LABELS, SEED, 0.4)
        return mixed, x + 0.0  # x is read after the mixing.

    mixed, original = mixed_and_original(images)
    np.testing.assert_array_equal(original, IMAGES)
    np.testing.assert_array_equal(images, IMAGES)
    assert not np.array_equal(mixed, IMAGES)
    np.testing.assert_array_equal(mixing.mixup(images, LABELS, SEED, 0.4)[0], mixed)
    np.testing.assert_array_equal(images, IMAGES)
