"""Progressive learning on a tiny model and generated data, through the real trainer."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train import progressive, schedules, training
from tests.training_helpers import tiny_config


class Recorder(keras.callbacks.Callback):
    """Records each trace of the train step, the shape of every batch trained on, and the head
    dropout rate at the start of each epoch."""

    def __init__(self):
        super().__init__()
        self.traces, self.batches, self.dropout = [], [], {}
        self.patched = False

    def on_train_begin(self, logs=None):
        if self.patched:
            return
        original = self.model.train_step

        def step(data):
            images = data[0]
            self.traces.append(tuple(images.shape))  # runs once per trace
            tf.py_function(lambda s: self.batches.append(tuple(s.numpy())), [tf.shape(images)], [])
            return original(data)

        self.model.train_step = step
        self.patched = True

    def on_epoch_begin(self, epoch, logs=None):
        self.dropout[epoch] = self.model.get_layer("top_dropout").rate
        self.batches.append(("epoch", epoch))


def _sizes_by_epoch(batches):
    sizes, epoch = {}, None
    for item in batches:
        if item[0] == "epoch":
            epoch = item[1]
            sizes[epoch] = set()
        else:
            sizes[epoch].add(item[1])
    return sizes


def test_stages_change_data_and_dropout_at_the_boundary_and_trace_once_per_stage(tmp_path):
    recorder = Recorder()
    result = training.train(tiny_config(), str(tmp_path), verbose=0, callbacks=[recorder])
    # Stages: epochs 0-1 at 32 px, dropout 0.0; epochs 2-3 at 48 px, dropout 0.3.
    assert _sizes_by_epoch(recorder.batches) == {0: {32}, 1: {32}, 2: {48}, 3: {48}}
    assert sum(1 for b in recorder.batches if b[0] != "epoch") == 4 * 3
    assert recorder.dropout == {0: 0.0, 1: 0.0, 2: pytest.approx(0.3), 3: pytest.approx(0.3)}
    assert [t[1] for t in recorder.traces] == [32, 48]  # one trace per stage, no more
    logs = result["logs"]
    assert (logs["stage"], logs["image_size"], logs["randaug_magnitude"]) == (2, 48, 5)


def test_resumed_run_lands_in_the_right_stage(tmp_path):
    config = tiny_config(**{"train.epochs": 6, "progressive.num_stages": 3, "progressive.image_size_end": 64,
                            "eval.image_size": 64})
    training.train(config, str(tmp_path), verbose=0, max_epochs=3)  # stops inside stage 2 (epochs 2-3)
    recorder = Recorder()
    training.train(config, str(tmp_path), verbose=0, callbacks=[recorder])
    stages = schedules.stage_epochs(6, 3)
    assert stages == [(0, 2), (2, 4), (4, 6)]
    # Resumes at epoch 3 (0-based), in stage 2 at 48 px, then stage 3 at 64 px.
    assert _sizes_by_epoch(recorder.batches) == {3: {48}, 4: {64}, 5: {64}}
    assert recorder.dropout[3] == pytest.approx(0.15) and recorder.dropout[4] == pytest.approx(0.3)
    assert [t[1] for t in recorder.traces] == [48, 64]


def test_callback_stage_lookup():
    spec = schedules.ProgressiveSpec(image_size=(32, 64), randaug_magnitude=(1, 3), mixup_alpha=(0, 0.1),
                                     dropout_rate=(0, 0.2))
    stages = [schedules.stage_params(0, 1, spec)]  # One stage: the end values.
    callback = progressive.ProgressiveLearning(stages, 5, dataset_fn=lambda p, e, skip: (p.image_size, e, skip))
    assert callback.dataset_for_epoch(4, skip_steps=2) == (64, 4, 2)
    with pytest.raises(ValueError, match="outside"):
        callback.stage_for_epoch(5)
    with pytest.raises(ValueError, match="cannot split 1 epochs into 2 stages"):
        progressive.ProgressiveLearning(stages * 2, 1, dataset_fn=None)


class LearningRates(keras.callbacks.Callback):
    """The optimizer's step and learning rate before every batch, and its EMA decay at each epoch."""

    def __init__(self):
        super().__init__()
        self.rates, self.ema_decay = {}, {}

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates[int(optimizer.iterations.numpy())] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.ema_decay[epoch] = self.model.optimizer.ema_momentum


class SigtermAtStep(keras.callbacks.Callback):
    """Sends this process SIGTERM (a preemption) during step ``step + 1`` (the trainer stops after it)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


# Stage 1 at 32 px: batch 8 * (48/32)^2 = 18 -> 16, 4 * 8 // 16 = 2 steps per epoch; stage 2 at 48 px: 8, 4.
SCALED = {"progressive.batch_scaling": "pixels", "train.steps_per_epoch": 4}


def test_per_stage_batch_steps_learning_rate_and_ema_follow_the_stage(tmp_path):
    recorder, rates = Recorder(), LearningRates()
    result = training.train(tiny_config(**SCALED), str(tmp_path), verbose=0, callbacks=[recorder, rates])
    shapes = [b for b in recorder.batches if b[0] != "epoch"]
    assert [(b[0], b[1]) for b in shapes] == [(16, 32)] * 4 + [(8, 48)] * 8
    assert int(result["optimizer"].iterations.numpy()) == 12
    # The learning rate, independently: peak 0.256 * 8 / 4096, warmup 1 epoch, then 0.97 every 2.4 epochs;
    # the epoch of a step counts stage 1's epochs in 2 steps and stage 2's in 4; stage 1 is x2 (RMSProp: linear).
    peak = 0.256 * 8 / 4096
    expected = {0: 0.0, 1: peak * 0.5 * 2, 2: peak * 2, 3: peak * 2, 4: peak, 5: peak, 6: peak, 7: peak,
                8: peak, 9: peak, 10: peak * 0.97, 11: peak * 0.97}  # step 10: epoch 3.5, 2.5 after warmup
    assert {s: rates.rates[s] for s in expected} == pytest.approx(expected, rel=1e-5)
    # The EMA averages over as many images per stage: decay 0.9 per step of 8, 0.9 ** 2 per step of 16.
    assert rates.ema_decay == pytest.approx({0: 0.81, 1: 0.81, 2: 0.9, 3: 0.9})
    assert result["logs"]["batch_size"] == 8


@pytest.mark.slow  # tests/test_steps_per_execution.py preempts inside per-stage batches too
def test_a_run_preempted_inside_a_larger_batch_stage_resumes_to_the_same_weights(tmp_path):
    config = tiny_config(**SCALED)
    straight = training.train(config, str(tmp_path / "straight"), verbose=0)
    # Stopped after step 3, the first of epoch 2's two (stage 1, batch 16); stage 2 then trains 4 steps of 8.
    with pytest.raises(training.Preempted, match=r"preempted in epoch 2 after step 1/2"):
        training.train(config, str(tmp_path / "resumed"), verbose=0, callbacks=[SigtermAtStep(2)])
    rates = LearningRates()
    resumed = training.train(config, str(tmp_path / "resumed"), verbose=0, callbacks=[rates])
    assert min(rates.rates) == 3 and int(resumed["optimizer"].iterations.numpy()) == 12
    for name in ("model", "optimizer"):
        a, b = straight[name], resumed[name]
        for x, y in zip(a.variables, b.variables):
            np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=x.path)
