"""Schedules as pure functions: the progressive-learning stages and the learning rate.

Progressive learning (Tan & Le 2021, Algorithm 1): training is split into ``M`` stages; stage ``i``
(0-based) trains at image size ``S_i = S_0 + (S_e - S_0) * i / (M - 1)`` with every regularizer
(RandAugment magnitude, mixup alpha, dropout rate) interpolated the same way. Stage 0 trains at
exactly ``S_0`` and the last stage at exactly ``S_e`` (the reference release never trained at ``S_0``
and never changed dropout; we follow the paper).

Stage boundaries: ``E`` epochs split into ``M`` stages of ``E // M`` epochs; the remainder
``E % M`` goes one epoch each to the *last* stages, so the largest images get the extra epochs
(350 epochs, 4 stages -> 87, 87, 88, 88).

Per-stage batch size (``progressive.batch_scaling = "pixels"``, off by default): a stage of smaller
images trains with a larger global batch, so that each step holds about as many pixels as a
final-stage step (a small-image step otherwise leaves the device underused). The learning rate of
the stage follows its batch by the optimizer's rule (``LR_BATCH_RULES``), and steps per epoch follow
the batch, so the learning rate is a function of the *epoch*, mapped from the optimizer's step
piecewise over the stretches of constant batch (``LearningRateSchedule(segments=...)``).
"""

import dataclasses
import math
import typing

import keras

__all__ = [
    "StageParams",
    "ProgressiveSpec",
    "stage_params",
    "stage_epochs",
    "stage_of_epoch",
    "starts_stage",
    "stage_batch_size",
    "learning_rate_scale",
    "LR_BATCH_RULES",
    "step_segments",
    "epoch_at_step",
    "LearningRateSchedule",
]

# How the learning rate follows the batch size (``learning_rate_scale``), by optimizer:
# - SGD (with momentum): linear, lr ~ batch (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
# - RMSProp: linear too, as the paper's recipe scales it (0.256 per 4096 images, Tan & Le 2021, and
#   ``train.lr_base_batch_size`` here), so a stage's learning rate is the one the recipe gives a run
#   at that batch.
# - AdamW: square root, lr ~ sqrt(batch): Adam's update is normalized by the gradient's second
#   moment, so its noise scales as lr / sqrt(batch) rather than lr / batch (Malladi et al. 2022, "On
#   the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS; Hoffer et al. 2017).
LR_BATCH_RULES = {"sgd": "linear", "rmsprop": "linear", "adamw": "sqrt"}


@dataclasses.dataclass(frozen=True)
class ProgressiveSpec:
    """The first and last stage's values of each progressive quantity."""

    image_size: tuple
    randaug_magnitude: tuple
    mixup_alpha: tuple
    dropout_rate: tuple
    round_image_size_to: int = 8
    # The global batch of the last stage (the configured one); None: the schedule sets no batch.
    batch_size: typing.Optional[int] = None
    # "none": every stage trains at ``batch_size``; "pixels": see ``stage_batch_size``.
    batch_scaling: str = "none"
    max_batch_size: typing.Optional[int] = None
    # Scaled batches are rounded down to a multiple of this (8 and the replica count).
    batch_multiple: int = 8
    # How the learning rate follows the batch: "linear" or "sqrt" (``LR_BATCH_RULES``).
    lr_batch_rule: str = "linear"


@dataclasses.dataclass(frozen=True)
class StageParams:
    stage: int
    num_stages: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    dropout_rate: float
    batch_size: typing.Optional[int] = None
    # The stage's learning rate over the schedule's (defined at ``spec.batch_size``).
    learning_rate_scale: float = 1.0


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
    size = int(round(size))
    batch, scale = spec.batch_size, 1.0
    if batch is not None:
        batch = stage_batch_size(size, spec.image_size[1], batch, spec.batch_scaling, spec.max_batch_size,
                                 spec.batch_multiple)
        scale = learning_rate_scale(batch, spec.batch_size, spec.lr_batch_rule)
    return StageParams(
        stage=stage,
        num_stages=num_stages,
        image_size=size,
        randaug_magnitude=float(_lerp(spec.randaug_magnitude, fraction)),
        mixup_alpha=float(_lerp(spec.mixup_alpha, fraction)),
        dropout_rate=float(_lerp(spec.dropout_rate, fraction)),
        batch_size=batch,
        learning_rate_scale=scale,
    )


def stage_batch_size(image_size, final_image_size, batch_size, scaling="none", max_batch_size=None, multiple=8):
    """The global batch of a stage at ``image_size`` whose last stage trains ``batch_size`` images of
    ``final_image_size``.

    ``scaling="none"``: ``batch_size``. ``"pixels"``: ``batch_size * (final_image_size / image_size)**2``
    (as many pixels per step as a last-stage step), capped at ``max_batch_size`` (None: no cap),
    rounded down to a multiple of ``multiple``, and never below ``batch_size``.
    """
    if scaling == "none":
        return int(batch_size)
    if scaling != "pixels":
        raise ValueError(f"unknown batch scaling {scaling!r}; expected one of ['none', 'pixels']")
    scaled = batch_size * (final_image_size / image_size) ** 2
    if max_batch_size is not None:
        scaled = min(scaled, max_batch_size)
    scaled = int(scaled // multiple) * multiple
    return int(max(scaled, batch_size))


def learning_rate_scale(batch_size, base_batch_size, rule="linear"):
    """The factor on the learning rate for ``batch_size`` over ``base_batch_size`` (``LR_BATCH_RULES``)."""
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return float(ratio)
    if rule == "sqrt":
        return float(math.sqrt(ratio))
    raise ValueError(f"unknown learning-rate batch rule {rule!r}; expected one of ['linear', 'sqrt']")


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


def starts_stage(epoch, total_epochs, num_stages):
    """Whether ``epoch`` (0-based) is the first epoch of its stage."""
    stage = stage_of_epoch(epoch, total_epochs, num_stages)
    return epoch == stage_epochs(total_epochs, num_stages)[stage][0]


def step_segments(bounds, steps_per_epoch, scales):
    """The ``segments`` of ``LearningRateSchedule`` for stages of epochs ``bounds`` (``stage_epochs``),
    ``steps_per_epoch`` and learning-rate ``scales`` each: neighbours that agree on both are merged, so
    a run whose stages all train at one batch has one segment (and the same arithmetic as before)."""
    segments = []
    for (start, end), steps, scale in zip(bounds, steps_per_epoch, scales):
        if segments and segments[-1][1:] == (int(steps), float(scale)):
            segments[-1] = (segments[-1][0] + end - start, *segments[-1][1:])
        else:
            segments.append((end - start, int(steps), float(scale)))
    return tuple(segments)


def epoch_at_step(step, segments):
    """The fractional epoch after ``step`` optimizer steps (Python; the schedule's graph twin is inline)."""
    epoch = 0.0
    for i, (epochs, steps, _) in enumerate(segments):
        if i == len(segments) - 1 or step < epochs * steps:
            return epoch + step / steps
        epoch, step = epoch + epochs, step - epochs * steps
    return epoch


@keras.saving.register_keras_serializable(package="efficientnetv2")
class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at the optimizer's step: linear warmup from 0 to ``peak``, then

    - ``exponential``: ``peak * decay_rate ** floor((epoch - warmup) / decay_epochs)`` (staircase),
    - ``cosine``: ``peak`` for the first ``hold_fraction`` of the epochs after warmup, then half a
      cosine from ``peak`` to ``minimum`` over the rest (``hold_fraction=0``: the plain cosine),
    - ``constant``: ``peak``;
    never below ``minimum``; all of it times the learning-rate scale of the step's segment.

    Epochs are fractional, on a progress axis that stays right when the batch changes between stages:
    ``segments`` are the run's stretches of constant batch, ``((epochs, steps_per_epoch, lr_scale), ...)``
    in order (``step_segments``); a step inside segment ``k`` is at epoch ``sum of the epochs before k +
    (step - first step of k) / steps_per_epoch_k``, and the last segment extends past its epochs. Without
    ``segments``: one segment of ``steps_per_epoch`` at scale 1, epoch = ``step / steps_per_epoch``.
    """

    def __init__(
        self,
        steps_per_epoch=None,
        peak=0.1,
        warmup_epochs=5.0,
        schedule="exponential",
        decay_rate=0.97,
        decay_epochs=2.4,
        total_epochs=350,
        minimum=0.0,
        segments=None,
        hold_fraction=0.0,
    ):
        if schedule not in ("exponential", "cosine", "constant"):
            raise ValueError(f"unknown learning-rate schedule {schedule!r}")
        if (steps_per_epoch is None) == (segments is None):
            raise ValueError("give the schedule steps_per_epoch or segments, exactly one of them")
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.segments = None if segments is None else tuple(
            (float(epochs), int(steps), float(scale)) for epochs, steps, scale in segments)
        if self.segments is not None and (not self.segments or any(s < 1 for _, s, _ in self.segments)):
            raise ValueError(f"segments {segments!r}: need at least one, each of >= 1 step per epoch")
        self.peak = float(peak)
        self.warmup_epochs = float(warmup_epochs)
        self.schedule = schedule
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.total_epochs = float(total_epochs)
        self.minimum = float(minimum)
        if not 0.0 <= float(hold_fraction) < 1.0:
            raise ValueError(f"hold_fraction {hold_fraction!r}: must be >= 0 and < 1")
        self.hold_fraction = float(hold_fraction)

    def _epoch_and_scale(self, step):
        """The fractional epoch of ``step`` (float32) and the learning-rate scale of its segment."""
        ops = keras.ops
        if self.segments is None:
            return step / float(self.steps_per_epoch), 1.0
        (epochs, steps, scale), *rest = self.segments
        # A sum of clipped pieces: each segment adds the part of its epochs the step has reached.
        if not rest:
            return step / float(steps), scale
        epoch = ops.clip(step / float(steps), 0.0, epochs)
        first = epochs * steps
        for i, (epochs, steps, next_scale) in enumerate(rest):
            piece = (step - first) / float(steps)
            piece = ops.maximum(piece, 0.0) if i == len(rest) - 1 else ops.clip(piece, 0.0, epochs)
            epoch = epoch + piece
            scale = ops.where(step >= first, next_scale, scale)
            first += epochs * steps
        return epoch, scale

    def __call__(self, step):
        ops = keras.ops
        epoch, scale = self._epoch_and_scale(ops.cast(step, "float32"))
        warm = self.peak * epoch / max(self.warmup_epochs, 1e-9)
        after = epoch - self.warmup_epochs
        if self.schedule == "exponential":
            decayed = self.peak * ops.power(self.decay_rate, ops.floor(after / self.decay_epochs))
        elif self.schedule == "cosine":
            span = max(self.total_epochs - self.warmup_epochs, 1e-9)
            hold = self.hold_fraction * span
            progress = ops.clip((after - hold) / max(span - hold, 1e-9), 0.0, 1.0)
            decayed = self.minimum + 0.5 * (self.peak - self.minimum) * (1.0 + ops.cos(math.pi * progress))
        else:
            decayed = ops.convert_to_tensor(self.peak, "float32")
        value = ops.where(epoch < self.warmup_epochs, warm, decayed)
        value = ops.maximum(value, self.minimum)
        return value if isinstance(scale, float) and scale == 1.0 else value * scale

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
            "hold_fraction": self.hold_fraction,
            "segments": None if self.segments is None else [list(s) for s in self.segments],
        }
