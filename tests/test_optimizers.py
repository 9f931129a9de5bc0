import keras
import numpy as np
import pytest

from efficientnetv2.train import optimizers
from hparams import config as config_lib


def _model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _decayed_by_adamw(weight_decay_on):
    """Names of the variables AdamW moves with zero gradients (only decay moves them)."""
    config = config_lib.load_config(dataset="synthetic", model="s")
    config_lib.apply_overrides(config, {"train.optimizer": "adamw", "train.weight_decay": "0.5",
                                        "train.weight_decay_on": weight_decay_on, "train.ema_decay": "0"})
    model = _model()
    for variable in model.trainable_variables:  # Non-zero everywhere, so that decay shows.
        variable.assign(np.ones(variable.shape, "float32"))
    optimizer = optimizers.make_optimizer(config.train, 0.1)
    optimizer.apply([np.zeros(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    return sorted(v.path.rsplit("/", 1)[-1] for v in model.trainable_variables if not np.all(np.asarray(v) == 1.0))


def test_adamw_decays_only_kernels_unless_told_all():
    assert _decayed_by_adamw("kernels") == ["kernel", "kernel"]
    assert _decayed_by_adamw("all") == ["beta", "bias", "gamma", "kernel", "kernel"]


def test_l2_weight_decay_on_kernels_or_all_weights():
    model = _model()
    assert optimizers.add_weight_decay(model, 1e-4) == 2
    model = _model()
    assert optimizers.add_weight_decay(model, 1e-4, on="all") == len(model.trainable_weights) == 5
    with pytest.raises(ValueError, match="'biases'"):
        optimizers.add_weight_decay(_model(), 1e-4, on="biases")
