"""The epoch loop: the paper's Algorithm 1, with the stops a long run needs.

For each stage, train its epochs at its image size and regularization: the epochs run in
``progressive_fit.train_epochs``, the same loop as the library call ``progressive_fit.fit``, and the
trainer's work goes in its hooks (``RunHooks``): after each epoch, stop on a non-finite loss, a
preemption or exhausted data, else checkpoint (and with evaluation on, keep the best). Each stop is
a small function raising its error with the last good checkpoint named.

With ``train.steps_per_execution`` = n > 1, Keras runs n steps per call of the train function and
calls the callbacks once per call, so a SIGTERM or a NaN loss is acted on at the end of the
execution it arrives in (up to n - 1 steps later); the saved position is still the exact step.
"""

import contextlib
import dataclasses
import functools
import math
import os
import threading
import time

from absl import logging
import keras
import tensorflow as tf

from efficientnetv2.io.checkpointing import RunCheckpoint
from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.model import build_model_from_config
from efficientnetv2.train import (compilation, data_position, distribute, evaluation, interrupts, keras_compat,
                                  progressive, progressive_fit, run_folder, schedules)
from efficientnetv2.train.plan import Plan

datasets = input_pipeline()

__all__ = ["Run", "run", "NonFiniteLoss", "DataExhausted", "OutOfMemory"]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


class DataExhausted(RuntimeError):
    """An epoch's training data ended before its planned steps (files gone or all undecodable)."""


class OutOfMemory(RuntimeError):
    """A training or evaluation step ran out of device or host memory (TensorFlow's ResourceExhaustedError)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training run works with: its config and folder, where it runs, its plan and data."""

    config: object
    model_dir: str
    strategy: object
    plan: Plan
    source: object
    device: str
    chief: bool
    evaluate_each_epoch: bool = False
    verbose: object = "auto"
    max_epochs: object = None  # Epochs of this call; None: to train.epochs.
    callbacks: tuple = ()  # Extra Keras callbacks, after the trainer's own.


def run(r):
    """The paper's Algorithm 1: for each stage, train its epochs at its image size and regularization
    (``progressive_fit.train_epochs``); after each epoch (``RunHooks``), stop on a non-finite loss, a
    preemption or exhausted data, else checkpoint."""
    _log_run(r)
    model, optimizer, checkpoint = _build_and_restore(r)
    epoch, step_in_epoch = checkpoint.position
    position = data_position.DataPosition(checkpoint.data_position)
    stages = progressive.ProgressiveLearning(r.plan.stages, r.config.train.epochs,
                                             _epoch_data(r.config, r.plan, r.source, r.strategy, position),
                                             ema_decay=r.config.train.ema_decay)
    end = r.config.train.epochs if r.max_epochs is None else min(r.config.train.epochs, epoch + r.max_epochs)
    with (interrupts.StopSignals() as stop,
          contextlib.closing(RunHooks(r, stages, model, optimizer, checkpoint, position, stop)) as hooks):
        epoch = progressive_fit.train_epochs(model, stages, epoch, end, hooks, skip_steps=step_in_epoch,
                                             verbose=r.verbose if r.chief else 0)
        return {"epoch": epoch, "model": model, "optimizer": optimizer, "plan": r.plan, "logs": hooks.logs}


class RunHooks(progressive_fit.EpochHooks):
    """What the trainer adds around each epoch of ``progressive_fit.train_epochs``: the plan's steps,
    augmented images at each stage's start, ``RunMonitor``, TensorBoard and the run's callbacks; after
    the epoch, its stop rules, the checkpoint, the best checkpoint and the epoch's log line."""

    def __init__(self, r, stages, model, optimizer, checkpoint, position, stop):
        super().__init__()
        self.r, self.stages, self.model, self.optimizer = r, stages, model, optimizer
        self.checkpoint, self.position, self.stop = checkpoint, position, stop
        model_dir, chief = r.model_dir, r.chief
        self.stage_images = (progressive.StageImages(os.path.join(model_dir, "logs", "stage_images"))
                             if chief and r.config.train.log_stage_images else None)
        # One events file per run (keras_compat.RunTensorBoard), closed by close().
        self.tensorboard = ([keras_compat.RunTensorBoard(os.path.join(model_dir, "logs"), update_freq="epoch")]
                            if chief else [])
        self.best = (evaluation.BestCheckpoint(checkpoint, os.path.join(model_dir, "best"), chief)
                     if r.evaluate_each_epoch else None)
        self.validation = (evaluation.ValidationScalars(os.path.join(model_dir, "logs", "validation"))
                           if self.best and chief else None)
        self.monitor = None
        self.logs = {}  # the last epoch's

    def close(self):
        for board in self.tensorboard:
            board.close()

    def epoch_steps(self, params):
        return self.r.plan.stage_steps(params)

    def begin_epoch(self, epoch, params, skip_steps):
        config = self.r.config
        if self.stage_images is not None and skip_steps == 0 and self.stages.starts_stage(epoch):
            self.stage_images.write(_augmented_images(config, self.r.source, params, epoch,
                                                      config.train.log_stage_images),
                                    params, int(self.optimizer.iterations.numpy()))
        self.monitor = RunMonitor(params.batch_size, self.epoch_steps(params) - skip_steps,
                                  first_step_in_epoch=skip_steps, stop=self.stop)
        return [self.monitor] + self.tensorboard + list(self.r.callbacks)

    def fit_failed(self, error, epoch, params):
        _stop_on_out_of_memory(error, epoch, params, self.checkpoint)

    def end_epoch(self, epoch, params, logs):
        r, checkpoint, monitor, steps = self.r, self.checkpoint, self.monitor, self.epoch_steps(params)
        _stop_on_nonfinite_loss(monitor, logs, epoch, params, checkpoint)
        _stop_on_preemption_inside_the_epoch(monitor, epoch, steps, checkpoint, self.position, self.stop)
        _stop_on_exhausted_data(monitor, logs, epoch, steps, r.config, checkpoint)
        path = checkpoint.save(epoch + 1, 0)
        if self.best is not None:
            results = self.best.evaluate_and_keep(self.model, self.optimizer, r.strategy, r.source, r.plan,
                                                  r.config.eval)
            logs.update(results)
            if self.validation is not None:
                self.validation.write(epoch, results)
        logging.info(
            "Epoch %d/%d (stage %d/%d, %d px): %s; checkpoint %s",
            epoch + 1, r.config.train.epochs, params.stage + 1, params.num_stages, params.image_size,
            ", ".join(f"{k} {v:.4g}" for k, v in sorted(logs.items())), path,
        )
        self.logs = logs
        if self.stop.requested.is_set():
            raise interrupts.Preempted(f"{self.stop.stopped} at the end of epoch {epoch + 1}; checkpoint {path}. "
                                       "Run the same command to resume.")


def _log_run(r):
    config, plan, source = r.config, r.plan, r.source
    logging.info("Data: %s", getattr(source, "describe", lambda: source.name)())
    logging.info(
        "Run: EfficientNetV2-%s, %d classes, %d epochs x %d steps, global batch %d on %d replica(s) "
        "(%s), precision %s, XLA %s, %d step(s) per execution, peak learning rate %.4g",
        plan.variant.name.upper(), plan.num_classes, config.train.epochs, plan.steps_per_epoch,
        plan.global_batch, r.strategy.num_replicas_in_sync, r.device, plan.mixed_precision,
        plan.jit_compile, plan.steps_per_execution, plan.peak_lr,
    )
    if config.progressive.batch_scaling != "none":
        logging.info("Per-stage batch (progressive.batch_scaling=%s): global batch %s, steps per epoch %s, "
                     "learning rate x %s (%s rule for %s)", config.progressive.batch_scaling,
                     [s.batch_size for s in plan.stages], [plan.stage_steps(s) for s in plan.stages],
                     [round(s.learning_rate_scale, 3) for s in plan.stages],
                     schedules.LR_BATCH_RULES[config.train.optimizer], config.train.optimizer)


def _build_and_restore(r):
    """The compiled model, its optimizer and checkpoint, restored from the run's latest checkpoint or,
    for a new run, from ``train.init_checkpoint``; then the run's config.yaml is written."""
    config, model_dir, strategy, plan, chief = r.config, r.model_dir, r.strategy, r.plan, r.chief
    compilation.setup_precision_and_seed(config, plan)
    with strategy.scope():
        model = build_model_from_config(config.model, plan.num_classes, dropout_rate=plan.stages[0].dropout_rate)
        optimizer = compilation.compile_model(config, plan, model)
        checkpoint = RunCheckpoint(
            os.path.join(model_dir, "checkpoints"), model, optimizer,
            max_to_keep=config.train.keep_checkpoints, chief=chief,
            worker_id=getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0) or 0,
        )
        restored = checkpoint.restore_latest()
        if restored is None and config.train.init_checkpoint:
            from efficientnetv2.io import weights_import  # noqa: PLC0415 only for fine-tuning

            weights_import.load_pretrained(model, config.train.init_checkpoint, plan.variant,
                                           max_unpacked_bytes=config.train.max_archive_mb * 2**20)
    if chief:
        # Only now, with the data found and the weights restored or imported: a command that failed
        # before this leaves no config that would make its corrected rerun look like a config change.
        logging.info("Config written to %s", run_folder.write_config(config, model_dir))
    if restored:
        epoch, step_in_epoch = checkpoint.position
        logging.info("Resumed from %s at epoch %d, step %d of the epoch.", restored, epoch, step_in_epoch)
    else:
        logging.info("Starting a new run in %s.", model_dir)
    return model, optimizer, checkpoint


class RunMonitor(keras.callbacks.Callback):
    """Per-epoch bookkeeping: images/s and learning rate in the logs, the batch position for SIGTERM
    saves, and a stop on non-finite loss.

    Positions come from the batch index, never from counting calls: with ``steps_per_execution`` = n,
    Keras calls ``on_train_batch_end`` once per n steps with the index of the execution's last step,
    and for the epoch's last, partial execution with ``begin + n - 1`` even though the data (exactly
    the epoch's steps, see ``_epoch_data``) ended before; so steps done = min(batch + 1, ``steps``).
    Data that ends early (``DataExhausted``) inside an execution is counted to that execution's end:
    it is caught when a later execution finds no data, which misses only an end inside the epoch's
    last execution (with n = 1 it is exact).
    """

    def __init__(self, global_batch, steps, first_step_in_epoch=0, stop=None):
        super().__init__()
        self.global_batch = global_batch
        self.first_step = self.step_in_epoch = first_step_in_epoch
        self.steps = steps  # of this fit call: the epoch's steps less those trained before a resume
        self.nonfinite = None
        self.preempt_requested = stop.requested if stop is not None else threading.Event()

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.batches = 0
        self.skipped_before = datasets.skipped_images(), datasets.skipped_shards()

    def on_train_batch_end(self, batch, logs=None):
        self.batches = min(batch + 1, self.steps)
        self.step_in_epoch = self.first_step + self.batches
        # The loss in the logs is the epoch's running mean, so a NaN anywhere in the execution shows.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nonfinite = float(loss)
            self.model.stop_training = True
        if self.preempt_requested.is_set():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        if logs is not None:
            logs["images_per_sec"] = self.batches * self.global_batch / elapsed
            # A short epoch of data repeats from its start (see _epoch_data): skipped files cost a
            # few repeated examples, never the run.
            images = datasets.skipped_images() - self.skipped_before[0]
            # Each damaged shard once, however often the repeats re-read it.
            shards = datasets.skipping.damaged_shards(since=self.skipped_before[1])
            logs["skipped_images"], logs["skipped_shards"] = float(images), float(len(shards))
            if images or shards:
                logging.warning("Epoch %d: %d undecodable images skipped (see the warnings above for "
                                "which files); %s.", epoch + 1, images,
                                datasets.skipping.describe_damaged_shards(shards))
            optimizer = self.model.optimizer
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(optimizer.learning_rate)
            )


def _epoch_data(config, plan, source, strategy, position=None):
    """``data(params, epoch, skip_steps)``: one epoch's distributed training data at the stage's image
    size, RandAugment magnitude and mixup alpha, without its first ``skip_steps`` steps (a resume).

    A resume drops the records those steps used before decoding them, where ``position`` (the
    checkpoint's) knows how many; else (a checkpoint without it) it drops built batches. When the data
    runs short the epoch repeats from its start, so a short epoch of data still fills the steps."""
    position = position or data_position.DataPosition()

    def data(params, epoch, skip_steps=0):
        def per_pipeline(context):
            batches = distribute.batches_per_step(context)
            batch_size = context.get_per_replica_batch_size(params.batch_size)
            build = functools.partial(
                datasets.build_train_dataset,
                source,
                batch_size=batch_size,
                image_size=params.image_size,
                randaug_magnitude=params.randaug_magnitude,
                randaug_num_layers=config.data.randaug_num_layers,
                randaug_pixel_scale=config.data.randaug_pixel_scale,
                crop_area_min=config.data.crop_area_min,
                mixup_alpha=params.mixup_alpha,
                cutmix_alpha=config.data.cutmix_alpha,
                seed=config.train.seed,
                epoch=epoch,
                input_context=context,
            )
            steps = plan.stage_steps(params)
            if config.data.service_address:
                # The workers repeat the epoch (each drops its own partial batch); the trainer takes the
                # epoch's steps from the job, a resume skips built batches (see the README, "tf.data
                # service").
                dataset = datasets.service.distribute(
                    build(key_examples_by="id").repeat(), config.data.service_address,
                    datasets.service.job_name(params.stage, epoch, context.input_pipeline_id))
                return dataset.take(steps * batches).skip(skip_steps * batches)
            start = position.start(context, batch_size) if skip_steps else (0, 0)
            # From the epoch's start, or (no saved position) skipping built batches.
            if start is None or start == (0, 0):
                dataset = build(with_position=True).repeat().take(steps * batches).skip(skip_steps * batches)
            else:  # The rest of the epoch's pass, then whole passes.
                dataset = (build(start=start, with_position=True)
                           .concatenate(build(with_position=True).repeat())
                           .take((steps - skip_steps) * batches))
            return position.track(dataset, context, batch_size, start, batches, (steps - skip_steps) * batches)

        return strategy.distribute_datasets_from_function(per_pipeline)

    return data


def _augmented_images(config, source, params, epoch, count):
    """The first ``count`` training images of ``epoch`` as its stage augments them (RandAugment; mixup
    and CutMix within these ``count``), in [0, 1], from a tiny pipeline of their own. The training data
    is a pure function of (seed, epoch), so taking them changes nothing in the run."""
    dataset = datasets.build_train_dataset(
        source, batch_size=count, image_size=params.image_size, randaug_magnitude=params.randaug_magnitude,
        randaug_num_layers=config.data.randaug_num_layers,
        randaug_pixel_scale=config.data.randaug_pixel_scale, crop_area_min=config.data.crop_area_min,
        mixup_alpha=params.mixup_alpha,
        cutmix_alpha=config.data.cutmix_alpha, seed=config.train.seed, epoch=epoch,
    )
    for x, _ in dataset.take(1):
        return tf.clip_by_value(datasets.mixing.mixed_images(x) / 255.0, 0.0, 1.0)
    return None  # Fewer than ``count`` training examples.


def _stop_on_out_of_memory(error, epoch, params, checkpoint):
    """An out-of-memory error of the epoch's ``fit`` is ``OutOfMemory`` naming the stage's batch and
    image size and what to lower."""
    if isinstance(error, tf.errors.ResourceExhaustedError):
        raise OutOfMemory(
            f"out of memory in epoch {epoch + 1} (stage {params.stage + 1}/{params.num_stages}) at global "
            f"batch {params.batch_size} and {params.image_size} px; lower train.batch_size (or "
            "progressive.max_batch_size, or progressive.image_size_end) and rerun; "
            f"{_last_checkpoint(checkpoint)}"
        ) from error


def _last_checkpoint(checkpoint, sentence=False):
    latest = checkpoint.reader.latest_checkpoint
    text = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved yet"
    return text[0].upper() + text[1:] if sentence else text


def _finite_logs(logs):
    return all(math.isfinite(v) for v in logs.values() if isinstance(v, (int, float)))


def _stop_on_nonfinite_loss(monitor, logs, epoch, params, checkpoint):
    if monitor.nonfinite is not None or not _finite_logs(logs):
        raise NonFiniteLoss(
            f"loss became {monitor.nonfinite if monitor.nonfinite is not None else logs.get('loss')} "
            f"in epoch {epoch + 1} (stage {params.stage + 1}, {params.image_size} px); stopped without "
            f"saving. {_last_checkpoint(checkpoint, sentence=True)}. Lower train.lr_base or check the data."
        )


def _stop_on_preemption_inside_the_epoch(monitor, epoch, steps, checkpoint, position, stop):
    """SIGTERM or Ctrl-C before the epoch's end (of ``steps``): save the position inside the epoch (with the
    records each input pipeline used, see ``data_position``) and stop."""
    if monitor.preempt_requested.is_set() and monitor.step_in_epoch < steps:
        path = checkpoint.save(epoch, monitor.step_in_epoch, data_position=position.rows(monitor.batches))
        raise interrupts.Preempted(
            f"{stop.stopped} in epoch {epoch + 1} after step {monitor.step_in_epoch}/{steps}; "
            f"checkpoint {path}. Run the same command to resume."
        )


def _stop_on_exhausted_data(monitor, logs, epoch, steps, config, checkpoint):
    if monitor.step_in_epoch < steps:
        raise DataExhausted(
            f"the training data of epoch {epoch + 1} ran out after {monitor.step_in_epoch} of "
            f"{steps} steps ({int(logs.get('skipped_images', 0))} images skipped as "
            f"undecodable and {int(logs.get('skipped_shards', 0))} damaged TFRecord shards skipped "
            f"in it); did {config.data.data_dir or config.data.dataset!r} disappear or "
            f"change? Not saving this epoch; {_last_checkpoint(checkpoint)}."
        )
