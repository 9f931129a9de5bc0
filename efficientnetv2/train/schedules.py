"""Schedules as pure functions: the progressive-learning stages and the learning rate.

Progressive learning (Tan & Le 2021, Algorithm 1): training is split into ``M`` stages; stage ``i``
(0-based) trains at image size ``S_i = S_0 + (S_e - S_0) * i / (M - 1)`` with every regularizer
(RandAugment magnitude, mixup alpha, dropout rate) interpolated the same way. Stage 0 trains at
exactly ``S_0`` and the last stage at exactly ``S_e`` (the reference release never trained at ``S_0``
and never changed dropout; we follow the paper).

Stage boundaries: ``E`` epochs split into ``M`` stages of ``E // M`` epochs; the remainder
``E % M`` goes one epoch each to the *last* stages, so the largest images get the extra epochs
(350 epochs, 4 stages -> 87, 87, 88, 88).
"""

import dataclasses
import math

import keras

__all__ = [
    "StageParams",
    "ProgressiveSpec",
    "stage_params",
    "stage_epochs",
    "stage_of_epoch",
    "LearningRateSchedule",
]


@dataclasses.dataclass(frozen=True)
class ProgressiveSpec:
    """The first and last stage's values of each progressive quantity."""

    image_size: tuple
    randaug_magnitude: tuple
    mixup_alpha: tuple
    dropout_rate: tuple
    round_image_size_to: int = 8


@dataclasses.dataclass(frozen=True)
class StageParams:
    stage: int
    num_stages: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    dropout_rate: float


def _lerp(bounds, fraction):
    start, end = bounds
    return start + (end - start) * fraction


def stage_params(stage, num_stages, spec):
    """The parameters of ``stage`` (0-based) of ``num_stages`` under ``spec``.

    Sizes are rounded to the nearest multiple of ``spec.round_image_size_to`` (when > 0), except
    the last stage, which is exactly the end size.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages}), got {stage}")
    fraction = stage / (num_stages - 1) if num_stages > 1 else 1.0
    size = _lerp(spec.image_size, fraction)
    multiple = spec.round_image_size_to
    if stage == num_stages - 1:
        size = spec.image_size[1]
    elif multiple:
        size = max(multiple, int(math.floor(size / multiple + 0.5)) * multiple)
    return StageParams(
        stage=stage,
        num_stages=num_stages,
        image_size=int(round(size)),
        randaug_magnitude=float(_lerp(spec.randaug_magnitude, fraction)),
        mixup_alpha=float(_lerp(spec.mixup_alpha, fraction)),
        dropout_rate=float(_lerp(spec.dropout_rate, fraction)),
    )


def stage_epochs(total_epochs, num_stages):
    """``[(first_epoch, end_epoch), ...]`` of each stage; the remainder goes to the last stages."""
    if num_stages < 1 or total_epochs < num_stages:
        raise ValueError(
            f"cannot split {total_epochs} epochs into {num_stages} stages of at least one epoch"
        )
    base, extra = divmod(total_epochs, num_stages)
    lengths = [base + (1 if i >= num_stages - extra else 0) for i in range(num_stages)]
    bounds, start = [], 0
    for length in lengths:
        bounds.append((start, start + length))
        start += length
    return bounds


def stage_of_epoch(epoch, total_epochs, num_stages):
    """The 0-based stage that ``epoch`` (0-based) belongs to."""
    for stage, (start, end) in enumerate(stage_epochs(total_epochs, num_stages)):
        if start <= epoch < end:
            return stage
    raise ValueError(f"epoch {epoch} is outside [0, {total_epochs})")


@keras.saving.register_keras_serializable(package="efficientnetv2")
class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at the optimizer's step: linear warmup from 0 to ``peak``, then

    - ``exponential``: ``peak * decay_rate ** floor((epoch - warmup) / decay_epochs)`` (staircase),
    - ``cosine``: half a cosine from ``peak`` to ``minimum`` over the epochs after warmup,
    - ``constant``: ``peak``;
    never below ``minimum``. Epochs are fractional: ``step / steps_per_epoch``.
    """

    def __init__(
        self,
        steps_per_epoch,
        peak,
        warmup_epochs=5.0,
        schedule="exponential",
        decay_rate=0.97,
        decay_epochs=2.4,
        total_epochs=350,
        minimum=0.0,
    ):
        if schedule not in ("exponential", "cosine", "constant"):
            raise ValueError(f"unknown learning-rate schedule {schedule!r}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.peak = float(peak)
        self.warmup_epochs = float(warmup_epochs)
        self.schedule = schedule
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.total_epochs = float(total_epochs)
        self.minimum = float(minimum)

    def __call__(self, step):
        ops = keras.ops
        epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
        warm = self.peak * epoch / max(self.warmup_epochs, 1e-9)
        after = epoch - self.warmup_epochs
        if self.schedule == "exponential":
            decayed = self.peak * ops.power(self.decay_rate, ops.floor(after / self.decay_epochs))
        elif self.schedule == "cosine":
            span = max(self.total_epochs - self.warmup_epochs, 1e-9)
            progress = ops.minimum(after / span, 1.0)
            decayed = self.minimum + 0.5 * (self.peak - self.minimum) * (1.0 + ops.cos(math.pi * progress))
        else:
            decayed = ops.convert_to_tensor(self.peak, "float32")
        value = ops.where(epoch < self.warmup_epochs, warm, decayed)
        return ops.maximum(value, self.minimum)

    def get_config(self):
        return {
            "steps_per_epoch": self.steps_per_epoch,
            "peak": self.peak,
            "warmup_epochs": self.warmup_epochs,
            "schedule": self.schedule,
            "decay_rate": self.decay_rate,
            "decay_epochs": self.decay_epochs,
            "total_epochs": self.total_epochs,
            "minimum": self.minimum,
        }
