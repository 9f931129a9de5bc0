"""The plan of a run: the config resolved against the variant and the data, before any model is built.

``make_plan`` is where a bad combination of config, variant and data fails, with a ``ConfigError``
naming the key: the stages of progressive learning (one stage trains at the end values), the eval
size, the global batch and steps per epoch, the peak learning rate, precision, XLA and steps per
execution.
"""

import dataclasses
import math

from absl import logging

from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.train import schedules
from efficientnetv2.variants import get_variant
from hparams import config as config_lib

datasets = input_pipeline()

__all__ = ["Plan", "make_plan"]


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
    config_lib.validate(config, num_replicas=num_replicas)
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
    config_lib.validate_sizes(config, last_train_size=stages[-1].image_size, eval_size=eval_size,
                              size_multiple=8 if device == "tpu" else 1)
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
