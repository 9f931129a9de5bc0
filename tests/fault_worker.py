"""Run by tests/test_faults.py and benchmarks/soak.py: the tiny training run, with an optional fault.

Usage: python -m tests.fault_worker <model_dir> [fault] [epochs] [steps_per_epoch]
Faults (the process SIGKILLs itself, as a preempted machine would die):
  step:N      right after global step N has been trained (before any checkpoint of it)
  in_save:N   inside the N-th checkpoint save of this process: data files written, index not yet
  none        no fault
The config is tiny_config(epochs=4, 2 stages, 5 steps per epoch, deterministic ops, stage images)
unless epochs and steps are given. Prints "START <global step>" when training starts and
"STEP <global step>" after every step (for benchmarks/soak.py to count lost steps).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402

from efficientnetv2.train import training  # noqa: E402
from tests.training_helpers import tiny_config, without_graph_optimizations  # noqa: E402

without_graph_optimizations()  # as in the test processes: the straight and the killed runs alike

# Stage images on (tiny_config's are off): a kill may land while they are written, as in a real run.
CONFIG = dict(**{"train.epochs": 4, "train.steps_per_epoch": 5, "train.deterministic": True,
                 "progressive.num_stages": 2, "train.log_stage_images": 4})


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class Progress(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.started = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.started:
            print("START", int(self.model.optimizer.iterations.numpy()), flush=True)
            self.started = True

    def on_train_batch_end(self, batch, logs=None):
        print("STEP", int(self.model.optimizer.iterations.numpy()), flush=True)


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            _die()


def main(model_dir, fault="none", epochs=None, steps_per_epoch=None):
    config = dict(CONFIG)
    if epochs:
        config["train.epochs"] = int(epochs)
    if steps_per_epoch:
        config["train.steps_per_epoch"] = int(steps_per_epoch)
    callbacks = [Progress()]
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
    try:
        result = training.train(tiny_config(**config), model_dir, verbose=0, callbacks=callbacks)
    except training.Preempted as e:
        print("PREEMPTED", e, flush=True)
        sys.exit(training.PREEMPTED_EXIT_CODE)
    print("DONE", result["epoch"], int(result["optimizer"].iterations.numpy()))


if __name__ == "__main__":
    main(*sys.argv[1:5])
