"""``train.steps_per_execution``: several train steps per call of Keras' train function, with every
position exact (SIGTERM saves, resume, NaN stops, per-stage batch, logs, progress bar)."""

import os
import signal

import keras
import numpy as np
import pytest

import datasets
from efficientnetv2.train import keras_compat, loop, training
from hparams.config import ConfigError
from tests.test_faults import assert_same_checkpoints, checkpoint_values
from tests.training_helpers import tiny_config

# Two stages of one epoch each; progressive.batch_scaling=pixels gives stage 1 a batch of 16 (5 steps
# per epoch) and stage 2 a batch of 8 (10 steps): with 4 steps per execution neither is a multiple of 4.
SETTINGS = {"train.epochs": 2, "train.steps_per_epoch": 10, "train.steps_per_execution": 4,
            "progressive.batch_scaling": "pixels"}
STAGE_STEPS = [5, 10]


class _BatchIndices(keras.callbacks.Callback):
    """The ``on_train_batch_end`` indices of each epoch (absolute epoch -> list)."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.seen[epoch] = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen[self.epoch].append(batch)


class _SigtermAt(keras.callbacks.Callback):
    """Sends this process a SIGTERM at the end of the execution with batch index ``batch`` of ``epoch``,
    as a preemption would while that execution runs (the trainer acts on it after the next one)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_keras_still_reports_a_partial_last_execution_by_its_full_end():
    """Canary for ``loop.RunMonitor`` counting min(batch + 1, steps) and for ``EpochProgbar``'s cap: Keras
    3.15.1 reports the last execution of a 10-step epoch at 4 steps per execution as batch 11."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    seen = _BatchIndices()
    x, y = np.ones((10, 2), "float32"), np.zeros((10, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[seen])
    assert seen.seen[0] == [3, 7, 11]
    assert int(model.optimizer.iterations.numpy()) == 10  # The data (10 batches) ends the last execution.


def test_progress_bar_never_counts_past_the_epoch(capsys):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    x, y = np.ones((10, 2), "float32"), np.zeros((10, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=1, verbose=1, callbacks=[keras_compat.EpochProgbar("Epoch 1/9")])
    out = capsys.readouterr().out
    assert "10/10" in out and "12/10" not in out and "11/10" not in out, out


def test_auto_is_one_on_cpu_and_gpu_and_at_most_100_and_an_epoch_on_tpu():
    source = datasets.get_source("synthetic")
    assert training.make_plan(tiny_config(), source).steps_per_execution == 1
    assert training.make_plan(tiny_config(), source, device="gpu").steps_per_execution == 1
    # The fewest steps of a stage's epoch: 5 at stage 1's batch of 16.
    assert training.make_plan(tiny_config(**dict(SETTINGS, **{"train.steps_per_execution": "auto"})), source,
                              device="tpu").steps_per_execution == 5
    long_epochs = tiny_config(**{"train.steps_per_epoch": 1000})
    assert training.make_plan(long_epochs, source, device="tpu").steps_per_execution == 100
    assert training.make_plan(tiny_config(**SETTINGS), source, device="tpu").steps_per_execution == 4


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many", "true"])
def test_a_bad_value_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"train.steps_per_execution.*'auto' or an integer >= 1"):
        tiny_config(**{"train.steps_per_execution": value})


def test_monitor_counts_steps_by_batch_index(monkeypatch):
    """Images/s and the position from the batch indices of a resumed epoch (3 of 10 steps trained before)
    at 4 steps per execution: 7 steps as executions ending at batches 3 and 7 (capped at 7)."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock))
    monitor = loop.RunMonitor(global_batch=8, steps=7, first_step_in_epoch=3)
    monitor.set_model(model)
    monitor.on_epoch_begin(0)
    monitor.on_train_batch_end(3, {"loss": 1.0})
    assert monitor.step_in_epoch == 7
    monitor.on_train_batch_end(7, {"loss": 1.0})
    assert monitor.step_in_epoch == 10 and monitor.batches == 7
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["images_per_sec"] == 7 * 8 / 2.0


def test_preemptions_at_execution_ends_resume_bit_identically(tmp_path, caplog):
    config = tiny_config(**SETTINGS)
    seen = _BatchIndices()
    straight = training.train(config, str(tmp_path / "straight"), verbose=0, callbacks=[seen])
    assert straight["epoch"] == 2
    assert seen.seen == {0: [3, 7], 1: [3, 7, 11]}  # Keras' indices; the last execution of each is partial.
    assert int(straight["optimizer"].iterations.numpy()) == sum(STAGE_STEPS)  # No step past an epoch's end.

    run = str(tmp_path / "preempted")
    # A SIGTERM during epoch 1's first execution is acted on after its second, the epoch's last (steps 5-5):
    # the epoch is complete, so it is saved as the end of epoch 1.
    with pytest.raises(training.Preempted, match="at the end of epoch 1"):
        training.train(config, run, verbose=0, callbacks=[_SigtermAt(0, 3)])
    # In epoch 2 (10 steps at batch 8): acted on after steps 5-8, saved at step 8 of the epoch.
    with pytest.raises(training.Preempted, match=r"preempted in epoch 2 after step 8/10"):
        training.train(config, run, verbose=0, callbacks=[_SigtermAt(1, 3)])
    _, values = checkpoint_values(run)
    assert int(values["step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE"]) == 8
    assert int(values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == STAGE_STEPS[0] + 8
    resumed_seen = _BatchIndices()
    with caplog.at_level("INFO", logger="absl"):  # absl's logger: under xdist the root's level differs.
        resumed = training.train(config, run, verbose=0, callbacks=[resumed_seen])
    assert "at epoch 1, step 8 of the epoch" in caplog.text
    assert "4 step(s) per execution" in caplog.text
    assert resumed["epoch"] == 2 and resumed_seen.seen == {1: [3]}  # The last 2 steps, one execution.
    assert int(resumed["optimizer"].iterations.numpy()) == sum(STAGE_STEPS)
    assert_same_checkpoints(tmp_path / "straight", run)


@pytest.mark.slow  # the preemption test resumes mid-epoch under the same settings
def test_max_epochs_stop_resumes_bit_identically(tmp_path):
    config = tiny_config(**SETTINGS)
    training.train(config, str(tmp_path / "straight"), verbose=0)
    training.train(config, str(tmp_path / "stopped"), verbose=0, max_epochs=1)
    training.train(config, str(tmp_path / "stopped"), verbose=0)
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "stopped")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    settings = dict(SETTINGS, **{"train.epochs": 3, "progressive.num_stages": 1})
    training.train(tiny_config(**settings), str(tmp_path), verbose=0, max_epochs=1)
    folder = str(tmp_path / "checkpoints")
    last_good = tf.train.latest_checkpoint(folder)
    exploding = tiny_config(**settings, **{"train.lr_base": 1e30, "train.warmup_epochs": 0.0,
                                           "train.lr_base_batch_size": 8})
    seen = _BatchIndices()
    with pytest.raises(training.NonFiniteLoss, match="loss became"):
        training.train(exploding, str(tmp_path), verbose=0, allow_config_change=True, callbacks=[seen])
    assert seen.seen == {1: [3]}  # Stopped at the end of the first execution of the resumed run.
    assert tf.train.latest_checkpoint(folder) == last_good
    _, values = checkpoint_values(str(tmp_path))
    assert int(values["epoch/.ATTRIBUTES/VARIABLE_VALUE"]) == 1


def test_evaluation_takes_eval_steps_batches_at_any_steps_per_execution(tmp_path):
    """eval.steps = 2 at 4 steps per execution evaluates 2 batches, as at 1 (an execution runs until
    its data ends, so the data itself must end at eval.steps)."""
    config = tiny_config(**SETTINGS)
    training.train(config, str(tmp_path), verbose=0, max_epochs=1)
    one = training.evaluate(tiny_config(**dict(SETTINGS, **{"train.steps_per_execution": 1})), str(tmp_path))
    four = training.evaluate(config, str(tmp_path))
    whole = training.evaluate(tiny_config(**dict(SETTINGS, **{"eval.steps": 4})), str(tmp_path))
    assert four["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert whole["loss"] != pytest.approx(one["loss"], rel=1e-6)  # 4 batches differ: the check can fail.
