import keras
import numpy as np
import pytest

import datasets
from efficientnetv2.train import compilation, optimizers, training
from hparams import config as config_lib


def _model(shape=(4, 4, 3), classes=2):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


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


def test_lr_hold_fraction_reaches_the_optimizers_schedule():
    """``train.lr_hold_fraction`` holds the trainer's learning rate at its peak after warmup."""

    def learning_rates(hold):
        config = config_lib.load_config(dataset="synthetic", model="b0")
        config_lib.apply_overrides(config, {
            "train.optimizer": "adamw", "train.lr_schedule": "cosine", "train.epochs": "5",
            "train.warmup_epochs": "1", "train.batch_size": "8", "train.steps_per_epoch": "10",
            "train.lr_hold_fraction": hold, "progressive.num_stages": "1", "train.ema_decay": "0"})
        plan = training.make_plan(config, datasets.get_source("synthetic"))
        optimizer = compilation.compile_model(config, plan, _model((None, None, 3), plan.num_classes))
        rates = []
        for step in (10, 25, 30, 40):
            optimizer.iterations.assign(step)
            rates.append(float(optimizer.learning_rate))
        return plan.peak_lr, rates

    peak, plain = learning_rates("0")
    assert plain[0] == pytest.approx(peak) and plain[1] < peak
    peak, held = learning_rates("0.5")  # 2 of the 4 epochs after warmup at the peak, then the cosine
    assert held[:3] == pytest.approx([peak] * 3) and held[3] == pytest.approx(peak / 2, rel=1e-5)
