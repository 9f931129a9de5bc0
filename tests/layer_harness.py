"""One shared check for every layer (after keras-hub's layer test harness).

``run_layer_checks`` builds a layer from keyword arguments and checks: the config round trip
(``get_config``/``from_config``), a symbolic call and an eager call giving the expected output
shape, one training step that changes the trainable weights and drives the loss down, and a call
under the ``mixed_bfloat16`` policy that computes in bfloat16 and keeps float32 variables.
"""

import keras
import numpy as np


def run_layer_checks(layer_class, init_kwargs, input_shape, expected_output_shape, call_kwargs=None):
    call_kwargs = call_kwargs or {}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, input_shape).astype("float32")

    # Config round trip: same config and same weight structure after from_config.
    layer = layer_class(**init_kwargs)
    config = layer.get_config()
    clone = layer_class.from_config(config)
    assert clone.get_config() == config

    # Symbolic call.
    symbolic = layer(keras.Input(batch_shape=input_shape), **call_kwargs)
    assert tuple(symbolic.shape) == tuple(expected_output_shape)

    # Eager call, and the clone has the same weights structure.
    eager = layer(x, **call_kwargs)
    assert tuple(eager.shape) == tuple(expected_output_shape)
    assert eager.dtype == "float32"
    clone(x, **call_kwargs)
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]

    # One training step: the loss goes down and the trainable weights change.
    inputs = keras.Input(batch_shape=input_shape)
    model = keras.Model(inputs, layer_class(**init_kwargs)(inputs, **call_kwargs))
    target = rng.uniform(-1, 1, expected_output_shape).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    before = [np.array(w) for w in model.trainable_weights]
    loss0 = float(model.evaluate(x, target, verbose=0))
    for _ in range(3):
        model.train_on_batch(x, target)
    loss1 = float(model.evaluate(x, target, verbose=0))
    if before:
        assert any(not np.allclose(a, np.array(b)) for a, b in zip(before, model.trainable_weights))
        assert loss1 < loss0

    # Mixed precision: bfloat16 compute, float32 variables.
    mixed = layer_class(**init_kwargs, dtype="mixed_bfloat16")
    out = mixed(x, **call_kwargs)
    assert out.dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in mixed.weights)
    np.testing.assert_allclose(np.array(out, dtype="float32").shape, expected_output_shape)
    return layer
