"""Run by tests/test_faults.py and benchmarks/soak.py: the tiny training run, with an optional fault.

Usage: python -m tests.fault_worker <model_dir> [fault]
Faults (the process SIGKILLs itself, as a preempted machine would die):
  step:N      right after global step N has been trained (before any checkpoint of it)
  in_save:N   inside the N-th checkpoint save of this process: data files written, index not yet
  none        no fault
The config is tiny_config(epochs=4, 2 stages, 5 steps per epoch, deterministic ops).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402

from efficientnetv2 import training  # noqa: E402
from tests.training_helpers import tiny_config  # noqa: E402

CONFIG = dict(**{"train.epochs": 4, "train.steps_per_epoch": 5, "train.deterministic": True,
                 "progressive.num_stages": 2})


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            _die()


def main(model_dir, fault="none"):
    callbacks = []
    kind, _, number = fault.partition(":")
    if kind == "step":
        callbacks.append(KillAtStep(int(number)))
    elif kind == "in_save":
        original = checkpoint_management.update_checkpoint_state_internal
        calls = {"n": 0}

        def update_then_maybe_die(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == int(number):
                _die()  # the data files of this checkpoint exist; the index does not name it
            return original(*args, **kwargs)

        checkpoint_management.update_checkpoint_state_internal = update_then_maybe_die
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")
    result = training.train(tiny_config(**CONFIG), model_dir, verbose=0, callbacks=callbacks)
    print("DONE", result["epoch"], int(result["optimizer"].iterations.numpy()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
