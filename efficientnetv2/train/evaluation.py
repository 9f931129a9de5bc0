"""Evaluation: of a run's checkpoint (``evaluate``), and after each epoch, keeping the best checkpoint.

Every eval example counts once, with the EMA weights, at the eval size, however the examples are
sharded over workers and replicas.
"""

import json
import os
import warnings

from absl import logging
import keras
import tensorflow as tf

from efficientnetv2.io import checkpointing
from efficientnetv2.io.checkpointing import RunCheckpoint
from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.model import build_model_from_config
from efficientnetv2.train import compilation, distribute, optimizers, run_folder
from efficientnetv2.train.plan import make_plan

datasets = input_pipeline()

__all__ = ["evaluate", "evaluate_model", "BestCheckpoint", "ValidationScalars"]


def evaluate(config, model_dir, strategy=None, checkpoint_path=None):
    """Evaluates a checkpoint (latest, or ``checkpoint_path``) with EMA weights at the eval size."""
    strategy = strategy or tf.distribute.get_strategy()
    run_folder.check_apart_from_data(model_dir, config.data.data_dir)
    source = datasets.get_source(config.data.dataset, config.data.data_dir, count_cache_dir=model_dir,
                                 holdout=config.data.holdout_examples)
    plan = make_plan(config, source, strategy.num_replicas_in_sync, distribute.device_kind(strategy))
    with compilation.restored_dtype_policy():
        return _evaluate_checkpoint(config, model_dir, strategy, checkpoint_path, source, plan)


def _evaluate_checkpoint(config, model_dir, strategy, checkpoint_path, source, plan):
    compilation.setup_precision_and_seed(config, plan)
    with strategy.scope():
        model = build_model_from_config(config.model, plan.num_classes, dropout_rate=plan.stages[-1].dropout_rate)
        optimizer = compilation.compile_model(config, plan, model)
        checkpoint = RunCheckpoint(os.path.join(model_dir, "checkpoints"), model, optimizer)
        if checkpoint_path:
            path = checkpoint.restore(checkpoint_path)
        else:
            path = checkpoint.restore_latest()
            if path is None:
                raise FileNotFoundError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')}")
    results = evaluate_model(model, optimizer, strategy, source, plan, config.eval)
    results["checkpoint"] = path
    results["epoch"] = checkpoint.position[0]
    results["image_size"] = plan.eval_size
    return results


def _eval_dataset(strategy, source, plan, eval_config):
    """Every eval example once, sharded over the input pipelines. Their shards may differ in size (a
    worker's TFRecord files, an uneven last batch): each step, tf.distribute's iterator asks every
    worker whether any has data left (its partial-batch handling, an all-reduce), so all run the same
    number of steps and a replica whose data has ended gets an empty batch, which counts nothing
    (``keras_compat.skip_empty_batches_in_evaluation``)."""

    def fn(context):
        dataset = datasets.build_eval_dataset(
            source,
            batch_size=context.get_per_replica_batch_size(eval_config.batch_size)
            if strategy.num_replicas_in_sync > 1
            else eval_config.batch_size,
            image_size=plan.eval_size,
            input_context=context,
        )
        # ``eval.steps`` ends the data: an execution of steps_per_execution steps runs until the data
        # ends, past ``evaluate(steps=...)``.
        return dataset if eval_config.steps is None else dataset.take(eval_config.steps * distribute.batches_per_step(context))

    return strategy.distribute_datasets_from_function(fn)


def evaluate_model(model, optimizer, strategy, source, plan, eval_config):
    data = _eval_dataset(strategy, source, plan, eval_config)
    with optimizers.swap_ema_weights(model, optimizer) as used_ema, warnings.catch_warnings():
        if eval_config.steps is None:
            # A full pass ends when the data does; Keras 3.15 warns about it all the same.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
        results = model.evaluate(data, steps=eval_config.steps, verbose=0, return_dict=True)
    results["ema"] = bool(used_ema)
    results["examples"] = _examples_evaluated(model)
    return results


def _examples_evaluated(model):
    """How many examples the last ``evaluate`` counted, summed over replicas and workers: the count of
    Keras' loss tracker (each batch adds its size; an empty batch, all a replica gets once its shard
    has ended while another's has not, adds nothing). Under MultiWorkerMirroredStrategy reading it is
    an all-reduce, so every worker reads it, as every worker runs ``evaluate``."""
    tracker = next(m for m in model.metrics if m.name == "loss")
    return int(round(float(keras.ops.convert_to_numpy(tracker.count))))


class BestCheckpoint:
    """Evaluates after each epoch and keeps the checkpoint of the best top-1 in ``model_dir/best``.

    The best top-1 so far is written beside it (``best/best.json``, after the checkpoint, by an
    atomic rename) and read back when the run resumes, so a resumed run replaces the kept checkpoint
    only with a better one. A ``best/`` written before this record existed holds a checkpoint of
    unknown top-1: the first evaluation after the resume replaces it, with a warning.
    """

    RECORD = "best.json"

    def __init__(self, checkpoint, directory, chief):
        self.manager = None
        self.best_top1 = -1.0
        self.record = os.path.join(directory, self.RECORD)
        if chief:
            checkpointing.remove_temp_folders(directory)  # Left by a save that was killed.
            self.manager = tf.train.CheckpointManager(checkpoint.checkpoint, directory, 1)
            self.best_top1 = self._read()

    def _read(self):
        if tf.io.gfile.exists(self.record):
            with tf.io.gfile.GFile(self.record) as f:
                best = json.load(f)
            logging.info("Best checkpoint so far: top-1 %.4f at step %d (%s)", best["top1"], best["step"],
                         self.manager.latest_checkpoint)
            return float(best["top1"])
        if self.manager.latest_checkpoint:
            logging.warning("%s holds a checkpoint without its top-1 (written by an earlier version); the "
                            "next evaluation replaces it", os.path.dirname(self.record))
        return -1.0

    def evaluate_and_keep(self, model, optimizer, strategy, source, plan, eval_config):
        results = evaluate_model(model, optimizer, strategy, source, plan, eval_config)
        if self.manager is not None and results.get("top1", -1.0) > self.best_top1:
            step = int(optimizer.iterations.numpy())
            checkpointing.save_checkpoint(self.manager, step)
            self.best_top1 = results["top1"]
            run_folder.write_atomically(self.record, json.dumps({"top1": float(self.best_top1), "step": step}))
        return {f"eval_{k}": v for k, v in results.items()}


class ValidationScalars:
    """The evaluation after each epoch as TensorBoard scalars next to the training ones.

    Keras' TensorBoard callback writes ``epoch_<metric>`` to ``logs/train`` at step = the 0-based
    epoch; it never sees our evaluation, which runs after ``fit`` returns. This writes the same names
    to ``logs/validation`` at the same step, so TensorBoard draws both curves on one chart.
    """

    def __init__(self, directory):
        self.writer = tf.summary.create_file_writer(directory)

    def write(self, epoch, results):
        with self.writer.as_default():
            for key, value in results.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar("epoch_" + key.removeprefix("eval_"), value, step=epoch)
        self.writer.flush()
