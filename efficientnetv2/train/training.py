"""Training and evaluation under a ``tf.distribute`` strategy, with the paper's recipe.

``train(config, model_dir, strategy)`` runs the whole job: it checks the config and finds the data
before building anything (``plan``, ``run_folder``), then trains epoch by epoch (``loop``), saving a
checkpoint after every epoch and on SIGTERM or Ctrl-C (``interrupts``). ``evaluate`` evaluates a
run's checkpoint (``evaluation``).

Exit paths: returns normally when all epochs are done; raises ``Preempted`` after saving on SIGTERM
or a first Ctrl-C (main.py exits with ``PREEMPTED_EXIT_CODE``; a second Ctrl-C aborts without
saving); raises ``NonFiniteLoss`` when the loss is NaN or Inf, leaving the last good checkpoint as
the newest, ``DataExhausted`` when an epoch's data ends early, and ``OutOfMemory`` naming the batch
and image size when a step runs out of memory.
"""

import contextlib

import tensorflow as tf

from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.train import compilation, distribute, loop, run_folder, run_lock
from efficientnetv2.train.evaluation import evaluate
from efficientnetv2.train.interrupts import PREEMPTED_EXIT_CODE, Preempted
from efficientnetv2.train.loop import DataExhausted, NonFiniteLoss, OutOfMemory
from efficientnetv2.train.plan import Plan, make_plan

datasets = input_pipeline()

__all__ = ["train", "evaluate", "Plan", "make_plan", "Preempted", "NonFiniteLoss", "DataExhausted",
           "OutOfMemory", "PREEMPTED_EXIT_CODE"]


def train(config, model_dir, strategy=None, evaluate_each_epoch=False, allow_config_change=False,
          verbose="auto", max_epochs=None, callbacks=()):
    """Trains (and with ``evaluate_each_epoch`` evaluates after each epoch, keeping the best checkpoint).

    ``max_epochs`` stops after that many epochs of this call (for tests and benchmarks); a later call
    with the same ``model_dir`` continues. ``callbacks`` are extra Keras callbacks, run after the
    trainer's own. Returns a dict with the model, optimizer, plan, epoch and the last epoch's logs.
    """
    strategy = strategy or tf.distribute.get_strategy()
    device = distribute.device_kind(strategy)
    chief = distribute.is_chief(strategy)
    # Everything that can fail on bad input fails here, before the model is built.
    run_folder.check_apart_from_data(model_dir, config.data.data_dir)
    source = datasets.get_source(config.data.dataset, config.data.data_dir, count_cache_dir=model_dir,
                                 holdout=config.data.holdout_examples)
    plan = make_plan(config, source, strategy.num_replicas_in_sync, device)
    datasets.service.check_reachable(config.data.service_address)
    if chief:
        run_folder.check_model_dir(model_dir)
    with run_lock.RunLock(model_dir) if chief else contextlib.nullcontext(), compilation.restored_dtype_policy():
        run_folder.check_config(config, model_dir, allow_config_change)
        return loop.run(loop.Run(config, model_dir, strategy, plan, source, device, chief, evaluate_each_epoch,
                                 verbose, max_epochs, tuple(callbacks)))
