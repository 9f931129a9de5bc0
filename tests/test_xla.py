"""The compiled train step is TPU-shaped: the whole step compiles with XLA (``jit_compile=True``, as on
TPU and GPU) on this CPU, once per progressive stage (static shapes: a new image size is a new program,
nothing else is), and trains to the same loss as without XLA."""

import keras
import numpy as np
import pytest

from efficientnetv2.train import training
from tests.training_helpers import tiny_config


class TraceCounter(keras.callbacks.Callback):
    """The input shape of each trace of the train step (a Python side effect runs at trace time only:
    XLA compiles each trace once)."""

    def __init__(self):
        super().__init__()
        self.traces = []
        self.patched = False

    def on_train_begin(self, logs=None):  # Called by each epoch's fit: patch the model once.
        if self.patched:
            return
        self.patched = True
        original = self.model.train_step

        def step(data):
            self.traces.append(tuple(data[0].shape))
            return original(data)

        self.model.train_step = step


def _run(model_dir, jit):
    # Two stages (32 px, then 48 px), 2 epochs each of 2 steps, RandAugment on. The model's own random ops
    # (dropout, stochastic depth) draw other random streams under XLA, so they are off for the comparison.
    config = tiny_config(**{"train.jit_compile": jit, "train.steps_per_epoch": 2, "model.drop_path_rate": 0.0,
                            "progressive.dropout_end": 0.0})
    counter = TraceCounter()
    result = training.train(config, str(model_dir), verbose=0, callbacks=[counter])
    weights = [np.array(w) for w in result["model"].weights]
    return counter.traces, result, weights


@pytest.mark.slow  # XLA compiles two stages twice
def test_the_train_step_compiles_with_xla_once_per_stage_and_matches_without(tmp_path):
    traces, xla, xla_weights = _run(tmp_path / "xla", "true")
    assert xla["plan"].jit_compile
    assert [t[1:3] for t in traces] == [(32, 32), (48, 48)]  # one program per stage
    assert all(t[0] == 8 for t in traces)  # static batch: no partial last batch, no None dimension
    _, plain, plain_weights = _run(tmp_path / "plain", "false")
    assert not plain["plan"].jit_compile
    assert xla["logs"]["loss"] == pytest.approx(plain["logs"]["loss"], rel=1e-4)
    assert xla["logs"]["image_size"] == 48
    for a, b in zip(xla_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
