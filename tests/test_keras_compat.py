"""Canaries for efficientnetv2/train/keras_compat.py: each reproduces with plain Keras the behaviour a
workaround exists for and asserts that it still happens. When one fails, Keras changed: check whether
the workaround is still needed and remove it if not (and its canary with it)."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train import keras_compat, optimizers
from tests.distributed_worker import run_two_workers
from tests.training_helpers import scalars


def _dense_model(optimizer):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _data():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    return x, np.ones((8, 2), "float32")


@pytest.mark.slow  # A canary for an upstream fix (2 processes); the workarounds are exercised in the
# normal suite by tests/test_distribute.py's multi-worker training.
def test_keras_multi_worker_fit_still_needs_both_workarounds(tmp_path):
    """2 worker processes (a single-worker MultiWorkerMirroredStrategy does not
    show either bug). Each worker fits a plain Keras model as is, with the symbolic build only, and
    with both workarounds."""
    results = run_two_workers(lambda index: ["keras-canary", str(tmp_path / f"canary{index}.json")])
    for returncode, err in results:
        assert returncode == 0, err[-4000:]
    for index in range(2):
        outcomes = json.loads((tmp_path / f"canary{index}.json").read_text())
        assert outcomes["multi_worker"], outcomes
        assert outcomes["plain"].startswith("ValueError: Attempt to convert a value (PerReplica"), (
            "Keras' fit no longer fails on the first distributed batch under 2 workers: "
            f"build_compiled_from_symbolic_batch may be obsolete ({outcomes['plain']})")
        assert outcomes["symbolic_build_only"].startswith(
            "ValueError: Invalid reduction dimension 0 for input with 0 dimensions"), (
            "Keras' fit no longer fails reducing scalar logs under 2 workers: give_logs_a_batch_axis "
            f"may be obsolete ({outcomes['symbolic_build_only']})")
        assert outcomes["both"] == "trained", outcomes


@pytest.mark.parametrize("strategy", [None, "mirrored"])
def test_multi_worker_workarounds_are_not_applied_elsewhere(strategy):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if strategy else tf.distribute.get_strategy()
    with strategy.scope():
        model = _dense_model("sgd")
        applied = keras_compat.fix_multi_worker_fit(
            model, strategy, (keras.KerasTensor((1, 4), "float32"), keras.KerasTensor((1, 2), "float32")))
    assert not applied and not keras_compat.multi_worker(strategy)
    assert not {"_maybe_symbolic_build", "train_step", "test_step"} & set(vars(model))
    history = model.fit(*_data(), batch_size=4, epochs=1, verbose=0)
    assert np.shape(history.history["loss"][-1]) == ()


def test_keras_fit_still_overwrites_the_weights_with_their_ema():
    x, y = _data()
    plain = _dense_model(keras.optimizers.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.5))
    plain.fit(x, y, batch_size=4, epochs=1, verbose=0)
    averages = [np.array(a) for a in plain.optimizer._model_variables_moving_average]
    # Keras' fit ends with the averages in the model (KeepTrainingWeightsAtEndOfFit exists for this).
    for weight, average in zip(plain.trainable_weights, averages):
        np.testing.assert_array_equal(np.array(weight), average)

    ours = _dense_model(optimizers.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.5))
    ours.fit(x, y, batch_size=4, epochs=1, verbose=0)
    averages = [np.array(a) for a in ours.optimizer._model_variables_moving_average]
    assert not np.allclose(np.array(ours.trainable_weights[0]), averages[0])


def test_keras_progbar_header_still_counts_the_fit_call(capsys):
    x, y = _data()
    model = _dense_model("sgd")
    model.fit(x, y, batch_size=4, initial_epoch=2, epochs=3, verbose=1)
    assert "Epoch 3/3" in capsys.readouterr().out  # Keras' header: the fit call's epochs.
    model.fit(x, y, batch_size=4, epochs=1, verbose=1)
    assert "Epoch" not in capsys.readouterr().out  # No header for one epoch: EpochProgbar relies on it.

    header = "Epoch 3/350 (stage 1/4, 128 px)"
    model.fit(x, y, batch_size=4, initial_epoch=2, epochs=3, verbose=1,
              callbacks=[keras_compat.EpochProgbar(header)])
    out = capsys.readouterr().out
    assert out.count("Epoch") == 1 and out.startswith(header + "\n"), out
    assert "2/2" in out  # Keras' bar itself still runs under the header.


class _StopAfterFirstStep(keras.callbacks.Callback):
    """Stops the epoch after its first step, as the trainer does on a preemption or a NaN loss."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.stop_training = True


def _bar_ends(out):
    """The step counts ("1/4") the progress bar showed, in order, colours and redraws undone."""
    return re.findall(r"^(\d+/\d+) ", re.sub(r"\x1b\[[0-9;]*m", "", out).replace("\r", "\n"), re.M)


def test_keras_progbar_still_ends_an_epoch_stopped_early_at_its_target(capsys):
    x, y = _data()
    model = _dense_model("sgd")
    model.fit(x, y, batch_size=2, epochs=1, verbose=1, callbacks=[_StopAfterFirstStep()])
    assert _bar_ends(capsys.readouterr().out)[-1] == "4/4"  # Keras: after one step of four.

    model.fit(x, y, batch_size=2, epochs=1, verbose=1,
              callbacks=[keras_compat.EpochProgbar("Epoch 1/9"), _StopAfterFirstStep()])
    ends = _bar_ends(capsys.readouterr().out)
    assert ends and set(ends) == {"1/4"}, ends  # Ours ends where the epoch stopped.


def _conv_bn():
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
                             keras.layers.BatchNormalization()])


def test_an_empty_batch_through_conv_and_batch_norm_fails_as_known_or_gives_an_empty_output():
    """Canary for ``skip_empty_batches_in_evaluation``. Whether TensorFlow 2.21 fails here depends on
    the machine: it failed (the error below) on the one the workaround was written on, fails with the
    operands named the other way round on an Intel Xeon with AVX-512, and returns an empty output on an
    AMD EPYC (AVX2, no AVX-512) one. The workaround stays while any machine fails; anything other than
    these outcomes is a new behaviour to look at."""
    try:
        out = _conv_bn().predict_on_batch(np.zeros((0, 4, 4, 3), "float32"))
    except tf.errors.InvalidArgumentError as error:
        assert re.search(r"Incompatible shapes: (\[8\] vs. \[0,4,4,3\]|\[0,4,4,3\] vs. \[8\])", str(error)), error
    else:
        assert out.shape == (0, 4, 4, 8)


def test_evaluation_skips_an_empty_batch_and_keeps_the_metrics():
    model = _conv_bn()
    model.compile(loss="mse", metrics=["mae"])
    keras_compat.skip_empty_batches_in_evaluation(model)
    x, y = np.ones((2, 4, 4, 3), "float32"), np.zeros((2, 4, 4, 8), "float32")
    model.test_on_batch(x, y)  # Builds the test function; then one full and one empty step on it.
    step = model.make_test_function()
    full = step(iter([(x, y)]))
    empty = step(iter([(x[:0], y[:0])]))
    assert {k: float(v) for k, v in empty.items()} == pytest.approx({k: float(v) for k, v in full.items()})


def test_keras_tensorboard_still_opens_new_event_files_at_every_fit(tmp_path):
    """The canary of ``RunTensorBoard``: plain Keras, two ``fit`` calls, two events files (and two
    copies of the model summary); the workaround writes both epochs into one file."""
    x, y = _data()
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    model, board = _dense_model("sgd"), keras.callbacks.TensorBoard(str(plain))
    for epoch in range(2):
        model.fit(x, y, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[board])
    assert len(list((plain / "train").glob("events.out.tfevents*"))) == 2
    board = keras_compat.RunTensorBoard(str(kept))
    for epoch in range(2):
        model.fit(x, y, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[board])
    board.close()
    assert len(list((kept / "train").glob("events.out.tfevents*"))) == 1
    assert set(scalars(kept / "train")["epoch_loss"]) == {0, 1}
