"""Training and evaluation under a ``tf.distribute`` strategy, with the paper's recipe.

``train(config, model_dir, strategy)`` runs the whole job: it checks the config and finds the data
before building anything, writes ``model_dir/config.yaml``, builds the model and optimizer in the
strategy's scope, restores the latest checkpoint, then trains epoch by epoch (``fit`` once per epoch,
see ``progressive``), saving a checkpoint after every epoch and on SIGTERM or Ctrl-C.

Exit paths: returns normally when all epochs are done; raises ``Preempted`` after saving on SIGTERM
or a first Ctrl-C (main.py exits with ``PREEMPTED_EXIT_CODE``; a second Ctrl-C aborts without
saving); raises ``NonFiniteLoss`` when the loss is NaN or Inf, leaving the last good checkpoint as
the newest, and ``OutOfMemory`` naming the batch and image size when a step runs out of memory.

With ``train.steps_per_execution`` = n > 1, Keras runs n steps per call of the train function and
calls the callbacks once per call, so a SIGTERM or a NaN loss is acted on at the end of the
execution it arrives in (up to n - 1 steps later); the saved position is still the exact step.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
import warnings

from absl import logging
import keras
import tensorflow as tf

from efficientnetv2.io import checkpointing
from efficientnetv2.train import (data_position, distribute, keras_compat, multilabel, optimizers, progressive,
                                  run_lock, schedules)
from efficientnetv2.io.checkpointing import RunCheckpoint
from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.model import build_model_from_config
from efficientnetv2.variants import get_variant
from hparams import config as config_lib

datasets = input_pipeline()

__all__ = ["train", "evaluate", "Plan", "make_plan", "Preempted", "NonFiniteLoss", "DataExhausted",
           "OutOfMemory", "PREEMPTED_EXIT_CODE"]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again" -- a restart resumes from the saved checkpoint.


class Preempted(RuntimeError):
    """SIGTERM or SIGINT (Ctrl-C) arrived; a checkpoint was saved and the run stopped."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


class DataExhausted(RuntimeError):
    """An epoch's training data ended before its planned steps (files gone or all undecodable)."""


class OutOfMemory(RuntimeError):
    """A training or evaluation step ran out of device or host memory (TensorFlow's ResourceExhaustedError)."""


@dataclasses.dataclass
class Plan:
    """Everything derived from the config and the data before any model is built."""

    variant: object
    num_classes: int
    class_names: object
    multi_label: bool
    stages: list
    eval_size: int
    global_batch: int
    steps_per_epoch: int
    peak_lr: float
    mixed_precision: str
    jit_compile: bool
    steps_per_execution: int = 1  # resolved from train.steps_per_execution by make_plan

    def stage_steps(self, params):
        """Steps per epoch of a stage: an epoch's images (``steps_per_epoch`` x ``global_batch``, both at
        the configured batch) in the stage's batches; ``steps_per_epoch`` itself when they agree."""
        return max(1, self.steps_per_epoch * self.global_batch // params.batch_size)


def _progressive_spec(config, spec, num_replicas=1):
    p = config.progressive

    def pick(start, end, default):
        return (default.start if start is None else start, default.end if end is None else end)

    return schedules.ProgressiveSpec(
        image_size=pick(p.image_size_start, p.image_size_end, spec.image_size),
        randaug_magnitude=pick(p.randaug_start, p.randaug_end, spec.randaug_magnitude),
        mixup_alpha=pick(p.mixup_start, p.mixup_end, spec.mixup_alpha),
        dropout_rate=pick(p.dropout_start, p.dropout_end, spec.dropout),
        round_image_size_to=p.round_image_size_to,
        batch_size=config.train.batch_size,
        batch_scaling=p.batch_scaling,
        max_batch_size=p.max_batch_size,
        batch_multiple=math.lcm(8, num_replicas),
        lr_batch_rule=(schedules.LR_BATCH_RULES[config.train.optimizer] if p.lr_batch_rule == "auto"
                       else p.lr_batch_rule),
    )


def make_plan(config, source, num_replicas=1, device="cpu"):
    """Resolves the config against the variant and the data; raises ConfigError on a bad combination.

    Every run is progressive (PAPER.md section 1); one stage trains at the end values throughout.
    """
    spec = get_variant(config.model.variant)
    config_lib.validate(config, num_replicas=num_replicas)  # The rules of single values first.
    epochs = config.train.epochs
    pspec = _progressive_spec(config, spec, num_replicas)
    if pspec.image_size[0] > pspec.image_size[1] and config.progressive.num_stages > 1:
        raise config_lib.ConfigError(
            f"progressive image sizes {pspec.image_size[0]} -> {pspec.image_size[1]} shrink; set "
            "progressive.image_size_start <= progressive.image_size_end (the variant's range is "
            f"{spec.image_size.start} -> {spec.image_size.end})"
        )
    num_stages = config.progressive.num_stages
    if 0 < epochs < num_stages:
        logging.warning("progressive.num_stages = %d but train.epochs = %d: training in %d stages "
                        "(every stage needs at least one epoch).", num_stages, epochs, epochs)
        num_stages = epochs
    stages = [schedules.stage_params(i, num_stages, pspec) for i in range(num_stages)]
    eval_size = config.eval.image_size or spec.eval_size
    config_lib.validate(
        config,
        num_replicas=num_replicas,
        last_train_size=stages[-1].image_size,
        eval_size=eval_size,
        size_multiple=8 if device == "tpu" else 1,
    )
    if any(s.image_size < 32 for s in stages):
        raise config_lib.ConfigError(
            f"image sizes {[s.image_size for s in stages]}: every stage's image size must be >= 32"
        )
    global_batch = config.train.batch_size
    steps = config.train.steps_per_epoch or datasets.steps_per_epoch(source, global_batch)
    precision = config.train.mixed_precision
    if precision == "auto":
        precision = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(device, "float32")
    jit = config.train.jit_compile
    jit = device in ("tpu", "gpu") if jit == "auto" else jit == "true"
    if jit and config.train.deterministic:
        # Keras compiles without XLA under op determinism (trainer.model_supports_jit); say so once here.
        logging.warning("train.deterministic=true: the train step runs without XLA (Keras does not compile "
                        "with TensorFlow's op determinism); set train.deterministic=false for XLA")
        jit = False
    plan = Plan(
        variant=spec,
        num_classes=source.num_classes,
        class_names=source.class_names,
        multi_label=bool(source.multi_label),
        stages=stages,
        eval_size=eval_size,
        global_batch=global_batch,
        steps_per_epoch=int(steps),
        peak_lr=config.train.lr_base * global_batch / config.train.lr_base_batch_size,
        mixed_precision=precision,
        jit_compile=jit,
    )
    plan.steps_per_execution = _steps_per_execution(config.train.steps_per_execution, device,
                                                    min(plan.stage_steps(s) for s in stages))
    return plan


def _steps_per_execution(value, device, fewest_epoch_steps):
    """``train.steps_per_execution`` resolved. ``auto``: 1 on CPU and GPU (their host dispatches ahead
    of the device, so a round trip per step costs little there), and on TPU min(100, the fewest steps
    of an epoch): without it each step is a host round trip, Keras' classic slowdown on TPU; 100
    steps make that overhead small next to them while a SIGTERM or NaN is still acted on within a
    few seconds, and the trainer calls ``fit`` once per epoch, so an execution never spans more."""
    if value != "auto":
        return int(value)
    return min(100, fewest_epoch_steps) if device == "tpu" else 1


def _loss_and_metrics(config, plan):
    # Per-step metrics stay cheap over 21k classes: top-1/top-5 of the argmax label (the reference's
    # acc_top1), and for multi-label data whether the top prediction is any of the image's labels.
    metrics = [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(k=min(5, plan.num_classes), name="top5"),
    ]
    if plan.multi_label:
        metrics.append(multilabel.TopOneInLabels(name="top1_any"))
    if config.train.loss == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=config.train.label_smoothing)
    elif plan.multi_label:
        loss = multilabel.NormalizedSoftmaxCrossEntropy(label_smoothing=config.train.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.train.label_smoothing
        )
    return loss, metrics


def _compile(config, plan, model):
    # Defined on epochs: the stages' steps per epoch and learning-rate scales follow their batches.
    segments = schedules.step_segments(schedules.stage_epochs(config.train.epochs, len(plan.stages)),
                                       [plan.stage_steps(s) for s in plan.stages],
                                       [s.learning_rate_scale for s in plan.stages])
    schedule = schedules.LearningRateSchedule(
        segments=segments,
        peak=plan.peak_lr,
        warmup_epochs=config.train.warmup_epochs,
        schedule=config.train.lr_schedule,
        decay_rate=config.train.lr_decay_rate,
        decay_epochs=config.train.lr_decay_epochs,
        total_epochs=config.train.epochs,
        minimum=config.train.lr_min,
    )
    optimizer = optimizers.make_optimizer(config.train, schedule)
    if plan.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    if config.train.optimizer != "adamw":
        optimizers.add_weight_decay(model, config.train.weight_decay, config.train.weight_decay_on)
    loss, metrics = _loss_and_metrics(config, plan)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=plan.jit_compile,
                  steps_per_execution=plan.steps_per_execution)
    optimizer.build(model.trainable_variables)
    # The reference's EMA also averages batch norm's moving statistics; evaluation uses those.
    optimizers.average_moving_statistics(model, optimizer)
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:  # Only replicas can be handed an empty batch.
        keras_compat.skip_empty_batches_in_evaluation(model)
    _mix_in_the_train_step(model)
    data_batch = (keras.KerasTensor((1, 32, 32, 3), "float32"),
                  keras.KerasTensor((1, plan.num_classes), "float32"))
    if not keras_compat.fix_multi_worker_fit(model, strategy, data_batch):
        # Keras would build them from the first training batch, whose images can be (images, mix).
        keras_compat.build_compiled_from_symbolic_batch(model, data_batch)
    return optimizer


def _mix_in_the_train_step(model):
    """The train step takes the input pipeline's batches as they come (uint8 images; with mixup or
    CutMix on, (images, mix) and the labels already mixed; ``datasets.mixing``) and casts and mixes
    the images on the device before the model sees them."""
    train_step = model.train_step

    def mixing_train_step(data):
        x, *rest = data
        return train_step((datasets.mixing.mixed_images(x), *rest))

    model.train_step = mixing_train_step


@contextlib.contextmanager
def _restored_dtype_policy():
    """Restores Keras' global dtype policy when the run returns (a run sets its own)."""
    previous = keras.config.dtype_policy()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _setup_precision_and_seed(config, plan):
    keras.mixed_precision.set_dtype_policy(plan.mixed_precision)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


# The keys that decide the weights' shapes: a checkpoint fits no model built with other values.
_ARCHITECTURE_KEYS = ("model.variant", "model.width", "model.depth", "model.blocks", "model.head_filters")


def _check_config(config, model_dir, allow_config_change):
    """Refuses to resume a run with another config (unless allowed). A ``config.yaml`` without any
    checkpoint is left by an attempt that failed before it trained: this command starts the run anew."""
    path = os.path.join(model_dir, "config.yaml")
    if not tf.io.gfile.exists(path):
        return
    if not checkpointing.checkpoint_candidates(os.path.join(model_dir, "checkpoints")):
        logging.info("%s is from an attempt that saved no checkpoint; this command's config replaces it.", path)
        return
    with tf.io.gfile.GFile(path, "rb") as f:
        previous = config_lib.from_yaml(f.read(), source=path)
    changed = config_lib.diff(previous, config)
    architecture = {k: v for k, v in changed.items() if k in _ARCHITECTURE_KEYS
                    and not (k == "model.variant" and _variant_name(v[0]) == _variant_name(v[1]))}
    if architecture and allow_config_change:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in architecture.items())
        raise config_lib.ConfigError(
            f"{model_dir} holds checkpoints of EfficientNetV2-{_variant_name(previous.model.variant).upper()} "
            "and this command "
            f"asks for another architecture ({lines}); --allow_config_change cannot change the weights' shapes. "
            f"Resume with --model={previous.model.variant}, or train in another --model_dir (fine-tune from "
            f"this run with train.init_checkpoint={model_dir})"
        )
    if changed and not allow_config_change:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise config_lib.ConfigError(
            f"{model_dir} holds a run with another config ({lines}); resume with the same "
            "config, use another --model_dir, or pass --allow_config_change"
        )
    if changed:
        logging.warning("Config changed on resume (allowed): %s", changed)


def _variant_name(name):
    """``name`` as the variants table spells it ("efficientnetv2-s" -> "s"); unknown names as given."""
    try:
        return get_variant(name).name
    except ValueError:
        return str(name)


def _write_atomically(path, text):
    """Writes ``text`` to ``path`` through a temporary file renamed over it: a kill leaves the old file."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def _write_config(config, model_dir):
    """Writes ``model_dir/config.yaml`` atomically."""
    return _write_atomically(os.path.join(model_dir, "config.yaml"), config_lib.dump(config))


def _check_apart_from_data(model_dir, data_dir):
    """Refuses a ``model_dir`` that is the data folder, inside it or holds it (real paths, links
    resolved): checkpoints among the photos would be read as a class folder by every later run."""
    if not data_dir or "://" in model_dir or "://" in data_dir:
        return
    run, data = os.path.realpath(model_dir), os.path.realpath(data_dir)
    if os.path.commonpath([run, data]) in (run, data):
        where = "is" if run == data else "is inside" if run.startswith(data + os.sep) else "holds"
        raise config_lib.ConfigError(
            f"--model_dir {model_dir} {where} the data folder --data_dir {data_dir}; pass a run folder "
            "outside the data (the run's files would be read as data)")


def _check_model_dir(model_dir):
    """Creates ``model_dir`` and proves it writable, or raises an OSError saying what is wrong with it."""
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise NotADirectoryError(f"--model_dir {model_dir} is a file, not a folder; pass a folder for the run")
    if "://" in model_dir:
        tf.io.gfile.makedirs(model_dir)
        return
    probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("probe\n")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--model_dir {model_dir} cannot be written ({e.strerror or e}); "
                              "pass a folder this user can write") from None


class _RunMonitor(keras.callbacks.Callback):
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
        return dataset if eval_config.steps is None else dataset.take(eval_config.steps * _batches_per_step(context))

    return strategy.distribute_datasets_from_function(fn)


def _evaluate_model(model, optimizer, strategy, source, plan, eval_config):
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


class _StopSignals:
    """While training: SIGTERM (a preemption) and SIGINT (Ctrl-C) ask the run to stop after the current
    step, which is then checkpointed; a second Ctrl-C aborts at once (``KeyboardInterrupt``), for a
    user who would rather lose the step than wait for it."""

    NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

    def __init__(self):
        self.requested = threading.Event()
        self.received = None
        self._previous = {}

    @property
    def stopped(self):
        """How a message says why the run stopped: "preempted" (SIGTERM) or "interrupted (Ctrl-C)"."""
        return "interrupted (Ctrl-C)" if self.received == signal.SIGINT else "preempted"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python installs handlers only there.
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.NAMES}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum, frame):
        if self.requested.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt("second Ctrl-C")
            return
        self.received = signum
        logging.warning("%s received: saving a checkpoint after the current step (or execution of "
                        "train.steps_per_execution steps), then stopping%s.", self.NAMES[signum],
                        "; Ctrl-C again aborts at once without saving" if signum == signal.SIGINT else "")
        self.requested.set()


def _batches_per_step(context):
    """Per-replica batches one input pipeline feeds per step: its worker's replicas each take one."""
    return max(1, context.num_replicas_in_sync // context.num_input_pipelines)


def _finite_logs(logs):
    return all(math.isfinite(v) for v in logs.values() if isinstance(v, (int, float)))


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
    _check_apart_from_data(model_dir, config.data.data_dir)
    source = datasets.get_source(config.data.dataset, config.data.data_dir, count_cache_dir=model_dir,
                                 holdout=config.data.holdout_examples)
    plan = make_plan(config, source, strategy.num_replicas_in_sync, device)
    datasets.service.check_reachable(config.data.service_address)
    if chief:
        _check_model_dir(model_dir)
    with run_lock.RunLock(model_dir) if chief else contextlib.nullcontext(), _restored_dtype_policy():
        _check_config(config, model_dir, allow_config_change)
        return _train(config, model_dir, strategy, plan, source, device, chief, evaluate_each_epoch, verbose,
                      max_epochs, callbacks)


def _train(config, model_dir, strategy, plan, source, device, chief, evaluate_each_epoch, verbose, max_epochs,
           callbacks):
    """The paper's Algorithm 1: for each stage, train its epochs at its image size and regularization;
    after each epoch, stop on a non-finite loss, a preemption or exhausted data, else checkpoint."""
    _log_run(config, strategy, plan, source, device)
    model, optimizer, checkpoint = _build_and_restore(config, model_dir, strategy, plan, chief)
    epoch, step_in_epoch = checkpoint.position
    position = data_position.DataPosition(checkpoint.data_position)
    stages = progressive.ProgressiveLearning(plan.stages, config.train.epochs,
                                             _epoch_data(config, plan, source, strategy, position),
                                             ema_decay=config.train.ema_decay)
    stage_images = (progressive.StageImages(os.path.join(model_dir, "logs", "stage_images"))
                    if chief and config.train.log_stage_images else None)
    tensorboard = [keras_compat.RunTensorBoard(os.path.join(model_dir, "logs"), update_freq="epoch")] if chief else []
    best = _BestCheckpoint(checkpoint, os.path.join(model_dir, "best"), chief) if evaluate_each_epoch else None
    validation = _ValidationScalars(os.path.join(model_dir, "logs", "validation")) if best and chief else None
    end = config.train.epochs if max_epochs is None else min(config.train.epochs, epoch + max_epochs)
    with _StopSignals() as stop, contextlib.ExitStack() as closing:
        for board in tensorboard:  # One events file per run (keras_compat.RunTensorBoard).
            closing.callback(board.close)
        logs = {}
        while epoch < end:
            params = stages.stage_for_epoch(epoch)
            steps = plan.stage_steps(params)
            if stage_images is not None and step_in_epoch == 0 and stages.starts_stage(epoch):
                stage_images.write(_augmented_images(config, source, params, epoch, config.train.log_stage_images),
                                   params, int(optimizer.iterations.numpy()))
            monitor = _RunMonitor(params.batch_size, steps - step_in_epoch, first_step_in_epoch=step_in_epoch,
                                  stop=stop)
            header = (f"Epoch {epoch + 1}/{config.train.epochs} (stage {params.stage + 1}/{params.num_stages}, "
                      f"{params.image_size} px" + (f", resumed at step {step_in_epoch}" if step_in_epoch else "") + ")")
            logs = _fit_epoch(model, stages.dataset_for_epoch(epoch, skip_steps=step_in_epoch), epoch,
                              steps - step_in_epoch, monitor,
                              [keras_compat.EpochProgbar(header), stages, monitor] + tensorboard + list(callbacks),
                              verbose if chief else 0, params, checkpoint)
            _stop_on_nonfinite_loss(monitor, logs, epoch, params, checkpoint)
            _stop_on_preemption_inside_the_epoch(monitor, epoch, steps, checkpoint, position, stop)
            _stop_on_exhausted_data(monitor, logs, epoch, steps, config, checkpoint)
            epoch, step_in_epoch = epoch + 1, 0
            path = checkpoint.save(epoch, 0)
            if best is not None:
                results = best.evaluate_and_keep(model, optimizer, strategy, source, plan, config.eval)
                logs.update(results)
                if validation is not None:
                    validation.write(epoch - 1, results)
            logging.info(
                "Epoch %d/%d (stage %d/%d, %d px): %s; checkpoint %s",
                epoch, config.train.epochs, params.stage + 1, params.num_stages, params.image_size,
                ", ".join(f"{k} {v:.4g}" for k, v in sorted(logs.items())), path,
            )
            if stop.requested.is_set():
                raise Preempted(f"{stop.stopped} at the end of epoch {epoch}; checkpoint {path}. Run the same "
                                "command to resume.")
        return {"epoch": epoch, "model": model, "optimizer": optimizer, "plan": plan, "logs": logs}


def _log_run(config, strategy, plan, source, device):
    logging.info("Data: %s", getattr(source, "describe", lambda: source.name)())
    logging.info(
        "Run: EfficientNetV2-%s, %d classes, %d epochs x %d steps, global batch %d on %d replica(s) "
        "(%s), precision %s, XLA %s, %d step(s) per execution, peak learning rate %.4g",
        plan.variant.name.upper(), plan.num_classes, config.train.epochs, plan.steps_per_epoch,
        plan.global_batch, strategy.num_replicas_in_sync, device, plan.mixed_precision,
        plan.jit_compile, plan.steps_per_execution, plan.peak_lr,
    )
    if config.progressive.batch_scaling != "none":
        logging.info("Per-stage batch (progressive.batch_scaling=%s): global batch %s, steps per epoch %s, "
                     "learning rate x %s (%s rule for %s)", config.progressive.batch_scaling,
                     [s.batch_size for s in plan.stages], [plan.stage_steps(s) for s in plan.stages],
                     [round(s.learning_rate_scale, 3) for s in plan.stages],
                     schedules.LR_BATCH_RULES[config.train.optimizer], config.train.optimizer)


def _build_and_restore(config, model_dir, strategy, plan, chief):
    """The compiled model, its optimizer and checkpoint, restored from the run's latest checkpoint or,
    for a new run, from ``train.init_checkpoint``; then the run's config.yaml is written."""
    _setup_precision_and_seed(config, plan)
    with strategy.scope():
        model = build_model_from_config(config.model, plan.num_classes, dropout_rate=plan.stages[0].dropout_rate)
        optimizer = _compile(config, plan, model)
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
        logging.info("Config written to %s", _write_config(config, model_dir))
    if restored:
        epoch, step_in_epoch = checkpoint.position
        logging.info("Resumed from %s at epoch %d, step %d of the epoch.", restored, epoch, step_in_epoch)
    else:
        logging.info("Starting a new run in %s.", model_dir)
    return model, optimizer, checkpoint


def _epoch_data(config, plan, source, strategy, position=None):
    """``data(params, epoch, skip_steps)``: one epoch's distributed training data at the stage's image
    size, RandAugment magnitude and mixup alpha, without its first ``skip_steps`` steps (a resume).

    A resume drops the records those steps used before decoding them, where ``position`` (the
    checkpoint's) knows how many; else (a checkpoint without it) it drops built batches. When the data
    runs short the epoch repeats from its start, so a short epoch of data still fills the steps."""
    position = position or data_position.DataPosition()

    def data(params, epoch, skip_steps=0):
        def per_pipeline(context):
            batches = _batches_per_step(context)
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


def _fit_epoch(model, data, epoch, steps, monitor, callbacks, verbose, params, checkpoint):
    """One epoch of ``fit`` (a stop signal asks ``monitor`` to stop after the current execution: the
    current step, or with ``train.steps_per_execution`` = n the current n steps); its last logs. Out of
    memory is ``OutOfMemory`` naming the stage's batch and image size and what to lower."""
    try:
        history = model.fit(data, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
    except tf.errors.ResourceExhaustedError as e:
        raise OutOfMemory(
            f"out of memory in epoch {epoch + 1} (stage {params.stage + 1}/{params.num_stages}) at global "
            f"batch {params.batch_size} and {params.image_size} px; lower train.batch_size (or "
            "progressive.max_batch_size, or progressive.image_size_end) and rerun; "
            f"{_last_checkpoint(checkpoint)}"
        ) from e
    return {k: float(v[-1]) for k, v in history.history.items() if v}


def _last_checkpoint(checkpoint, sentence=False):
    latest = checkpoint.reader.latest_checkpoint
    text = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved yet"
    return text[0].upper() + text[1:] if sentence else text


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
        raise Preempted(
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


class _BestCheckpoint:
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
        results = _evaluate_model(model, optimizer, strategy, source, plan, eval_config)
        if self.manager is not None and results.get("top1", -1.0) > self.best_top1:
            step = int(optimizer.iterations.numpy())
            checkpointing.save_checkpoint(self.manager, step)
            self.best_top1 = results["top1"]
            _write_atomically(self.record, json.dumps({"top1": float(self.best_top1), "step": step}))
        return {f"eval_{k}": v for k, v in results.items()}


class _ValidationScalars:
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


def evaluate(config, model_dir, strategy=None, checkpoint_path=None):
    """Evaluates a checkpoint (latest, or ``checkpoint_path``) with EMA weights at the eval size."""
    strategy = strategy or tf.distribute.get_strategy()
    _check_apart_from_data(model_dir, config.data.data_dir)
    source = datasets.get_source(config.data.dataset, config.data.data_dir, count_cache_dir=model_dir,
                                 holdout=config.data.holdout_examples)
    plan = make_plan(config, source, strategy.num_replicas_in_sync, distribute.device_kind(strategy))
    with _restored_dtype_policy():
        return _evaluate_checkpoint(config, model_dir, strategy, checkpoint_path, source, plan)


def _evaluate_checkpoint(config, model_dir, strategy, checkpoint_path, source, plan):
    _setup_precision_and_seed(config, plan)
    with strategy.scope():
        model = build_model_from_config(config.model, plan.num_classes, dropout_rate=plan.stages[-1].dropout_rate)
        optimizer = _compile(config, plan, model)
        checkpoint = RunCheckpoint(os.path.join(model_dir, "checkpoints"), model, optimizer)
        if checkpoint_path:
            path = checkpoint.restore(checkpoint_path)
        else:
            path = checkpoint.restore_latest()
            if path is None:
                raise FileNotFoundError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')}")
    results = _evaluate_model(model, optimizer, strategy, source, plan, config.eval)
    results["checkpoint"] = path
    results["epoch"] = checkpoint.position[0]
    results["image_size"] = plan.eval_size
    return results
