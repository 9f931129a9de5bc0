"""datasets/synthetic.py: the built-in procedurally rendered dataset."""

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import synthetic
from tests.datasets_helpers import eager_and_mapped


def test_render_is_deterministic_at_any_size():
    for size in (8, 17, 64):
        image = eager_and_mapped(lambda i: synthetic.render(i, size), np.int64(13))
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, synthetic.render(13, size).numpy())


def test_render_is_the_same_picture_at_every_resolution():
    small = tf.image.resize(tf.cast(synthetic.render(21, 32), tf.float32), [8, 8], method="area")
    large = tf.image.resize(tf.cast(synthetic.render(21, 128), tf.float32), [8, 8], method="area")
    other = tf.image.resize(tf.cast(synthetic.render(22, 128), tf.float32), [8, 8], method="area")
    assert np.abs(small - large).mean() < 12
    assert np.abs(other - large).mean() > 2 * np.abs(small - large).mean()


def test_labels_are_balanced_and_images_differ():
    src = datasets.get_source(synthetic_train_examples=30, synthetic_eval_examples=10)
    labels = [int(e["label"]) for e in src.examples("train", image_size=16)]
    assert np.bincount(labels).tolist() == [3] * 10
    images = np.stack([synthetic.render(i, 24).numpy() for i in range(10)])
    assert len({im.tobytes() for im in images}) == 10


def test_splits_render_different_images():
    assert not np.array_equal(synthetic.render(3, 16, split="train").numpy(),
                              synthetic.render(3, 16, split="eval").numpy())


def test_describe_says_it_is_synthetic():
    src = datasets.SyntheticSource(train_examples=5, eval_examples=2)
    assert (src.num_examples("train"), src.num_examples("eval")) == (5, 2)
    assert src.class_names == list(synthetic.CLASS_NAMES) and len(src.class_names) >= 10
    assert "SYNTHETIC" in src.describe() and "--data_dir" in src.describe()
    with pytest.raises(ValueError, match="train_examples=0"):
        datasets.SyntheticSource(train_examples=0)


@pytest.mark.slow
def test_a_small_convnet_learns_it():
    """Batch normalization makes the learning steady: without it the net sat at chance for 3 to 6
    epochs before learning, depending on sub-level rounding of the inputs (the same data rounded to
    uint8 ended at 0.38 instead of 0.90 after 8 epochs); with it both ended at 0.88-0.89 after 8,
    and the uint8 one at 0.96 after 10."""
    import keras

    keras.utils.set_random_seed(0)
    src = datasets.get_source(synthetic_train_examples=4000, synthetic_eval_examples=500)
    layers = [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0)]
    for filters in (16, 32, 64):
        for _ in range(2):
            layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
                       keras.layers.BatchNormalization(), keras.layers.ReLU()]
        layers.append(keras.layers.MaxPooling2D())
    model = keras.Sequential(layers + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    for epoch in range(10):
        model.fit(datasets.build_train_dataset(src, 64, 32, randaug_magnitude=5, epoch=epoch), verbose=0)
    _, accuracy = model.evaluate(datasets.build_eval_dataset(src, 100, 32), verbose=0)
    assert accuracy > 0.85
