"""Weight transfer both ways with keras.applications.EfficientNetV2*, checked on outputs."""

import numpy as np
import pytest

from efficientnetv2 import build_model
from efficientnetv2.io.keras_applications import (
    build_keras_application,
    copy_weights_from,
    copy_weights_to,
    layer_map,
)
from tests.weights_randomizer import randomize_weights


def _check_both_ways(variant, size):
    shape = (size, size, 3)
    ours = build_model(variant, input_shape=shape)
    theirs = build_keras_application(variant, input_shape=shape)
    x = np.random.default_rng(1).uniform(0, 255, (2,) + shape).astype("float32")

    randomize_weights(ours, seed=0)
    copy_weights_to(ours, theirs)
    a, b = np.array(ours(x, training=False)), np.array(theirs(x, training=False))
    assert np.abs(a).max() > 1.0, "randomized logits should be of order 1 or more"
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()

    randomize_weights(theirs, seed=1)
    copy_weights_from(theirs, ours)
    a, b = np.array(ours(x, training=False)), np.array(theirs(x, training=False))
    assert np.abs(b).max() > 1.0
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


@pytest.mark.parametrize("variant", ["b0", "s"])
def test_weight_transfer_small(variant):
    _check_both_ways(variant, 64)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "s", "m", "l"])
def test_weight_transfer_all_variants(variant):
    _check_both_ways(variant, 224)


def test_every_keras_application_layer_is_mapped():
    ours = build_model("b0")
    theirs = build_keras_application("b0")
    weighted = {l.name for l in theirs.layers if l.weights}
    assert set(layer_map(ours)) == weighted


def test_mismatched_models_refused():
    ours = build_model("b1")
    theirs = build_keras_application("b0")
    with pytest.raises(ValueError, match="do not match"):
        copy_weights_to(ours, theirs)
    ours = build_model("b0", num_classes=10)
    with pytest.raises(ValueError, match="predictions"):
        copy_weights_to(ours, theirs)


def test_xl_has_no_keras_application():
    with pytest.raises(ValueError, match="no keras.applications counterpart"):
        build_keras_application("xl")
