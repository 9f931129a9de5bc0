"""The EMA as the reference release does it: batch-norm moving statistics averaged with the weights
(``optimizers.average_moving_statistics``), swapped in for evaluation, saved under ``ema/`` and used
by export, resumed bit for bit; checkpoints without them still resume.

Expected averages are replayed in numpy from the statistics the model had after each step and the
reference's decay ``min(decay, (1 + step) / (10 + step))``, not read from the optimizer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import build_model
from efficientnetv2.io import checkpointing
from efficientnetv2.io.checkpointing import RunCheckpoint, restore_model
from efficientnetv2.train import optimizers, training
from tests.training_helpers import TINY_BLOCKS, tiny_config

DECAY = 0.9


def _model():
    return build_model("s", num_classes=3, blocks=TINY_BLOCKS, head_filters=16, bn_momentum=0.5)


def _compiled(model, statistics=True):
    optimizer = optimizers.RMSprop(0.01, use_ema=True, ema_momentum=DECAY)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)
    if statistics:
        assert optimizers.average_moving_statistics(model, optimizer) == len(optimizers.moving_statistics(model))
    return optimizer


class _Record(keras.callbacks.Callback):
    def __init__(self, variables):
        super().__init__()
        self.variables, self.values = variables, []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append([np.array(v) for v in self.variables])


def _data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"),
            np.eye(3, dtype="float32")[rng.integers(0, 3, n)])


def test_statistics_are_averaged_with_the_reference_decay():
    model = _model()
    optimizer = _compiled(model)
    statistics = optimizers.moving_statistics(model)
    # Every batch norm's mean and variance (stem, blocks, head), and nothing else.
    assert len(statistics) == 2 * sum(isinstance(l, keras.layers.BatchNormalization) for l in model._flatten_layers())
    assert {v.path.rsplit("/", 1)[1] for v in statistics} == {"moving_mean", "moving_variance"}
    expected = [np.array(v) for v in statistics]  # The averages start at the statistics.
    record = _Record(statistics)
    model.fit(*_data(), batch_size=2, epochs=2, verbose=0, callbacks=[record], shuffle=False)
    for step, values in enumerate(record.values):
        decay = min(DECAY, (1 + step) / (10 + step))
        expected = [decay * a + (1 - decay) * s for a, s in zip(expected, values)]
    averages = [np.array(a) for _, a in optimizer.moving_statistics_averages]
    for variable, got, want in zip(statistics, averages, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    assert max(np.abs(a - np.array(v)).max() for a, v in zip(averages, statistics)) > 1e-3, \
        "the averages must differ from the statistics for this test to mean something"

    before = {v.path: np.array(v) for v in model.weights}
    with optimizers.swap_ema_weights(model, optimizer) as used:
        assert used
        for (variable, average) in optimizer.moving_statistics_averages:
            np.testing.assert_array_equal(np.array(variable), np.array(average), err_msg=variable.path)
    for v in model.weights:
        np.testing.assert_array_equal(np.array(v), before[v.path], err_msg=v.path)


def test_statistics_averages_are_not_optimizer_variables():
    """The optimizer's own variables (and so its checkpoint entries) stay what Keras saves."""
    model = _model()
    plain = _compiled(_model(), statistics=False)
    optimizer = _compiled(model)
    assert len(optimizer.variables) == len(plain.variables)
    assert not any(a is v for _, a in optimizer.moving_statistics_averages for v in optimizer.variables)


def test_checkpoint_saves_restores_and_exports_the_averaged_statistics(tmp_path, caplog):
    model = _model()
    optimizer = _compiled(model)
    model.fit(*_data(), batch_size=2, epochs=1, verbose=0)
    averages = {v.path: np.array(a) for v, a in optimizer.moving_statistics_averages}
    trained = {v.path: np.array(v) for v in model.weights}
    path = RunCheckpoint(str(tmp_path / "run"), model, optimizer).save(1)
    names = {name for name, _ in tf.train.list_variables(path)}
    assert "ema/stem_bn.Smoving_mean/.ATTRIBUTES/VARIABLE_VALUE" in names

    # Resume: the averages come back exactly.
    resumed = _model()
    resumed_optimizer = _compiled(resumed)
    RunCheckpoint(str(tmp_path / "run"), resumed, resumed_optimizer).restore(path)
    for v, a in resumed_optimizer.moving_statistics_averages:
        np.testing.assert_array_equal(np.array(a), averages[v.path], err_msg=v.path)
        np.testing.assert_array_equal(np.array(v), trained[v.path], err_msg=v.path)

    # Export and fine-tuning read them with the averaged weights.
    fresh = _model()
    assert restore_model(path, fresh, use_ema=True)
    for v in optimizers.moving_statistics(fresh):
        np.testing.assert_array_equal(np.array(v), averages[v.path], err_msg=v.path)
    read = checkpointing.read_weights(path)
    for name, value in averages.items():
        np.testing.assert_array_equal(read.value(name), value, err_msg=name)
    fresh = _model()
    assert not restore_model(path, fresh, use_ema=False)
    for v in optimizers.moving_statistics(fresh):
        np.testing.assert_array_equal(np.array(v), trained[v.path], err_msg=v.path)


def test_checkpoint_without_averaged_statistics_resumes_with_them_restarted(tmp_path, caplog):
    model = _model()
    optimizer = _compiled(model, statistics=False)  # As versions before this one saved.
    model.fit(*_data(), batch_size=2, epochs=1, verbose=0)
    trained = {v.path: np.array(v) for v in model.weights}
    path = RunCheckpoint(str(tmp_path / "old"), model, optimizer).save(1)

    resumed = _model()
    resumed_optimizer = _compiled(resumed)
    with caplog.at_level("WARNING"):
        RunCheckpoint(str(tmp_path / "old"), resumed, resumed_optimizer).restore(path)
    assert "restart at the restored statistics" in caplog.text
    for v, a in resumed_optimizer.moving_statistics_averages:
        np.testing.assert_array_equal(np.array(a), trained[v.path], err_msg=v.path)
    fresh = _model()
    assert restore_model(path, fresh, use_ema=True)  # Averaged weights, the model's statistics.
    for v in optimizers.moving_statistics(fresh):
        np.testing.assert_array_equal(np.array(v), trained[v.path], err_msg=v.path)


@pytest.mark.slow  # the SIGKILL test compares every checkpoint variable, averages included
def test_training_resumes_the_averaged_statistics_bit_for_bit(tmp_path):
    overrides = {"train.epochs": 2, "progressive.num_stages": 1, "eval.steps": 1}
    config = tiny_config(**overrides)
    straight = training.train(config, str(tmp_path / "straight"), verbose=0)
    training.train(config, str(tmp_path / "resumed"), verbose=0, max_epochs=1)
    resumed = training.train(config, str(tmp_path / "resumed"), verbose=0)
    a = checkpointing.ema_variables(straight["model"], straight["optimizer"])
    b = checkpointing.ema_variables(resumed["model"], resumed["optimizer"])
    statistics = {v.path for v in optimizers.moving_statistics(straight["model"])}
    assert statistics and statistics <= a.keys() and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.array(a[name]), np.array(b[name]), err_msg=name)
