"""The input pipeline on real photographs: ../shared/data/imagenette (skipped when absent)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import datasets
from tests.datasets_helpers import IMAGENETTE, first_batches

pytestmark = pytest.mark.skipif(not os.path.isdir(IMAGENETTE),
                                reason=f"real images not present at {IMAGENETTE}")


@pytest.fixture(scope="module")
def imagenette():
    return datasets.get_source("auto", IMAGENETTE)


def test_detected_as_a_folder_with_its_splits(imagenette):
    assert imagenette.name == "folder" and imagenette.num_classes == 10
    assert imagenette.class_names[:2] == ["English_springer", "French_horn"]
    assert (imagenette.num_examples("train"), imagenette.num_examples("eval")) == (9469, 3925)


def test_grayscale_jpegs_come_out_rgb(imagenette):
    paths, _ = imagenette.files("train")
    gray = next(p for p in paths[::7] if tf.io.extract_jpeg_shape(tf.io.read_file(p))[2] == 1)
    image = datasets.decode.random_resized_crop(tf.io.read_file(gray), tf.constant([0, 1]), 64)
    assert image.shape == (64, 64, 3)
    np.testing.assert_allclose(image[..., 0], image[..., 2], atol=1e-3)  # Gray stays gray.


def test_train_and_eval_batches(imagenette):
    before = datasets.skipped_images()
    (images, mix), labels = first_batches(datasets.build_train_dataset(
        imagenette, batch_size=8, image_size=64, randaug_magnitude=15, mixup_alpha=0.2), 1)[0]
    assert images.shape == (8, 64, 64, 3) and mix.shape == (8, 5) and labels.shape == (8, 10)
    assert images.std() > 20  # Photographs, not blank frames.
    images, labels = first_batches(datasets.build_eval_dataset(imagenette, 8, 64), 1)[0]
    assert labels.argmax(axis=1).tolist() == [0] * 8  # Eval is in folder order.
    assert datasets.skipped_images() == before
