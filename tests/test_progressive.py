"""Progressive learning on a tiny model and generated data, through the real trainer."""

import keras
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
