import keras
import numpy as np
import pytest

import efficientnetv2
from efficientnetv2.blocks import FusedMBConv, MBConv
from efficientnetv2.model import FEATURE_LEVELS, build_model, set_dropout_rate

# PAPER.md section 2: exact parameter counts with the head, 1000 classes, BN statistics included.
REFERENCE_PARAMS = {
    "b0": 7_200_312, "b1": 8_212_124, "b2": 10_178_374, "b3": 14_467_622,
    "s": 21_612_360, "m": 54_431_388, "l": 119_027_848, "xl": 208_896_832,
}
TINY = dict(blocks="r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r1_k3_s2_e2_i16_o16_se0.25,"
                   "r1_k3_s2_e2_i16_o24_se0.25,r1_k3_s2_e2_i24_o32_se0.25", head_filters=64)


@pytest.mark.parametrize("variant", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(variant):
    # Building a functional model only traces shapes symbolically: no forward pass on data. In a
    # StatelessScope Keras creates the variables without running their initializers (XL 9.3 -> 5.8 s).
    with keras.StatelessScope():
        model = build_model(variant, input_shape=(None, None, 3))
    assert model.count_params() == REFERENCE_PARAMS[variant]


def test_block_names_and_types_follow_keras_applications():
    model = build_model("s")
    blocks = [l for l in model.layers if isinstance(l, (MBConv, FusedMBConv))]
    assert [b.name for b in blocks[:3]] == ["block1a", "block1b", "block2a"]
    assert blocks[-1].name == "block6o"
    assert sum(isinstance(b, FusedMBConv) for b in blocks) == 2 + 4 + 4
    assert len(blocks) == 2 + 4 + 4 + 6 + 9 + 15
    names = {l.name for l in model.layers}
    assert {"stem_conv", "stem_bn", "top_conv", "top_bn", "top_dropout", "predictions"} <= names


def test_drop_path_grows_linearly_with_block_index():
    model = build_model("b0", drop_path_rate=0.2)
    blocks = [l for l in model.layers if isinstance(l, (MBConv, FusedMBConv))]
    rates = [b.drop_path_rate for b in blocks]
    np.testing.assert_allclose(rates, [0.2 * i / len(blocks) for i in range(len(blocks))])


def test_tiny_model_logits_and_softmax():
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    logits = build_model("s", num_classes=5, **TINY)(x)
    assert tuple(logits.shape) == (2, 5)
    probs = build_model("s", num_classes=5, classifier_activation="softmax", **TINY)(x)
    np.testing.assert_allclose(np.array(probs).sum(axis=1), 1.0, rtol=1e-5)


def test_any_input_size():
    model = build_model("s", num_classes=3, **TINY)
    for size in (32, 48, 64):
        assert tuple(model(np.zeros((1, size, size, 3), "float32")).shape) == (1, 3)


def test_backbone_features_at_five_reduction_levels():
    model = build_model("s", include_top=False, input_shape=(64, 64, 3))
    assert list(model.output) == list(FEATURE_LEVELS)
    shapes = {k: tuple(v.shape) for k, v in model.output.items()}
    assert [shapes[k][1] for k in FEATURE_LEVELS] == [32, 16, 8, 4, 2]
    assert [shapes[k][3] for k in FEATURE_LEVELS] == [24, 48, 64, 160, 1280]


@pytest.mark.parametrize("pooling, layer", [("avg", "avg_pool"), ("max", "max_pool")])
def test_pooled_backbone(pooling, layer):
    model = build_model("b0", include_top=False, pooling=pooling, input_shape=(32, 32, 3))
    assert tuple(model.output.shape) == (None, 1280)
    assert model.layers[-1].name == layer


@pytest.mark.parametrize("variant, first", [("s", "rescaling"), ("b0", "rescaling")])
def test_preprocessing_maps_pixels_like_keras_applications(variant, first):
    model = build_model(variant, **TINY)
    layer = model.get_layer(first)
    x = np.array([[[[0.0, 128.0, 255.0]]]], "float32")
    y = np.array(layer(x))
    if variant == "s":
        np.testing.assert_allclose(y, x / 128.0 - 1.0, rtol=1e-6)
    else:
        y = np.array(model.get_layer("normalization")(y))
        expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_no_preprocessing():
    model = build_model("s", include_preprocessing=False, **TINY)
    assert "rescaling" not in {l.name for l in model.layers}


def test_set_dropout_rate_takes_effect_on_a_compiled_model():
    model = build_model("s", num_classes=2, dropout_rate=0.0, drop_path_rate=0.0, **TINY)
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x = np.ones((4, 32, 32, 3), "float32") * 100
    y = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    model.train_on_batch(x, y)
    first = model.train_function
    set_dropout_rate(model, 0.4)
    assert model.get_layer("top_dropout").rate == 0.4
    assert model.train_function is not first  # rebuilt, so the next step is traced with 0.4
    model.train_on_batch(x, y)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        set_dropout_rate(model, 1.0)


def test_head_dropout_layer_always_present():
    model = build_model("s", dropout_rate=0.0, **TINY)
    assert model.get_layer("top_dropout").rate == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(dropout_rate=1.2), "dropout_rate"), (dict(drop_path_rate=-0.1), "drop_path_rate"),
     (dict(pooling="sum"), "pooling"), (dict(input_shape=(32, 32, 1)), "input_shape"),
     (dict(blocks="r1_k3_s1_e1_i8_x8"), "unknown key")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("s", **kwargs)


def test_mixed_bfloat16_model_outputs_float32_logits():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model("s", num_classes=3, **TINY)
        y = model(np.zeros((1, 32, 32, 3), "float32"))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert y.dtype == "float32"
    assert model.get_layer("block3a").compute_dtype == "bfloat16"


def test_package_exports():
    for name in ("build_model", "set_dropout_rate", "MBConv", "FusedMBConv", "SqueezeExcite",
                 "StochasticDepth", "get_variant", "decode", "encode"):
        assert hasattr(efficientnetv2, name)


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = build_model("s", num_classes=3, **TINY)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on: no Lambda layers anywhere
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=1e-6)


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_classifier_starts_with_logits_of_the_same_scale_whatever_the_class_count(num_classes):
    """The classifier's initial weights scale with its inputs only: 10 classes start like 1,000 do, with
    logits well below 1 (a from-scratch 10-class run must not start above the loss ln(num_classes))."""
    keras.utils.set_random_seed(0)
    model = build_model("b0", num_classes=num_classes, input_shape=(64, 64, 3), width=0.25, depth=0.25)
    kernel = np.array(model.get_layer("predictions").kernel)
    fan_in = kernel.shape[0]
    np.testing.assert_allclose(kernel.var(), 1 / (3 * fan_in), rtol=0.1)
    images = np.random.default_rng(0).uniform(0, 255, (32, 64, 64, 3)).astype("float32")
    logits = np.array(model(images, training=True))
    assert logits.std() < 0.5, logits.std()
    labels = np.eye(num_classes)[np.arange(32) % num_classes]
    loss = float(keras.losses.categorical_crossentropy(labels, logits, from_logits=True).numpy().mean())
    assert loss < np.log(num_classes) + 0.2, loss
