"""The paper's optimizer: RMSProp with an EMA of the weights, and L2 weight decay on kernels.

Three departures from Keras' stock optimizer EMA:

- Keras' ``fit`` ends by overwriting the model's weights with their EMA
  (``finalize_variable_values``). The trainer calls ``fit`` once per epoch, so that would replace the
  training weights by their average every epoch. Here finalize does nothing
  (``keras_compat.KeepTrainingWeightsAtEndOfFit``); evaluation and export swap the EMA weights in
  explicitly (``swap_ema_weights``) and swap them back.
- The EMA decay warms up as in the reference release, ``min(decay, (1 + step) / (10 + step))``, so
  that a short run's average is not stuck at the initial weights.
- The batch-norm moving statistics are averaged too, as the reference release does
  (``tf.train.ExponentialMovingAverage`` over the trainable variables and the moving means and
  variances), and evaluation and export use the averaged ones: the averaged weights then meet
  statistics of the same period. Keras' own EMA cannot hold them: ``build(variables)`` creates the
  averages for the variables it also creates slots for and updates them from ``apply``'s
  trainable list, so a non-trainable variable there would get RMSProp slots and a gradient it never
  has. ``average_moving_statistics(model, optimizer)`` gives the optimizer the model's statistics;
  their averages start at the statistics' values and are updated in the same step, right after the
  trainable averages, with the same decay. They are not the optimizer's checkpoint dependencies
  (its saved variables stay what Keras saves); ``checkpointing.RunCheckpoint`` saves them with the
  other averages under ``ema/<variable path>``.
"""

import contextlib

import keras
from keras import ops

from efficientnetv2.train.keras_compat import KeepTrainingWeightsAtEndOfFit

__all__ = ["make_optimizer", "add_weight_decay", "swap_ema_weights", "has_ema", "average_moving_statistics",
           "moving_statistics"]

# Trainable variables that are not kernels: batch norm's scale and offset, and biases. Decaying them
# towards 0 shrinks what normalization restores; the reference release decays neither.
_NOT_KERNELS = ("gamma", "beta", "bias")
_KERNELS = ("/kernel", "/depthwise_kernel")

# The non-trainable variables the reference's EMA averages: batch norm's moving mean and variance.
_STATISTICS = ("/moving_mean", "/moving_variance")


class _Untracked:
    """Holds the statistics' averages out of the optimizer's checkpoint dependencies (a plain object:
    neither Keras' variable tracker nor TensorFlow's attribute tracking look into it)."""

    def __init__(self, pairs):
        self.pairs = pairs


class _EMAMixin(KeepTrainingWeightsAtEndOfFit):
    """Keras optimizer EMA with decay warmup, batch-norm statistics averaged too, and without the
    end-of-fit overwrite."""

    @property
    def moving_statistics_averages(self):
        """[(model statistic, its average)]: empty until ``average_moving_statistics``."""
        holder = getattr(self, "_statistics_averages", None)
        return holder.pairs if holder is not None else []

    def track_moving_statistics(self, variables):
        """Averages ``variables`` (non-trainable) from the next step on, starting at their values."""
        if not self.use_ema or self.moving_statistics_averages:
            return
        strategy = getattr(self, "_distribution_strategy", None)  # TensorFlow's optimizers have one.
        pairs = []
        for variable in variables:
            place = strategy.extended.colocate_vars_with(variable.value) if strategy else contextlib.nullcontext()
            with place:
                average = keras.Variable(
                    initializer=ops.convert_to_numpy(variable), dtype=variable.dtype, trainable=False,
                    aggregation="none", name=variable.path.replace("/", "_") + "_average",
                )
            pairs.append((variable, average))
        object.__setattr__(self, "_statistics_averages", _Untracked(pairs))

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        decay = ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        pairs = list(zip(trainable_variables, self._model_variables_moving_average))
        # Read after the forward pass has updated them (the step's ops on one variable run in order).
        pairs += self.moving_statistics_averages
        for var, average in pairs:
            if average is not None:
                d = ops.cast(decay, average.dtype)
                average.assign(d * average + (1.0 - d) * ops.cast(var, average.dtype))


@keras.saving.register_keras_serializable(package="efficientnetv2")
class RMSprop(_EMAMixin, keras.optimizers.RMSprop):
    """``keras.optimizers.RMSprop`` with the EMA behaviour described in the module docstring."""


@keras.saving.register_keras_serializable(package="efficientnetv2")
class SGD(_EMAMixin, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` (Nesterov momentum) with the EMA behaviour of the module docstring."""


@keras.saving.register_keras_serializable(package="efficientnetv2")
class AdamW(_EMAMixin, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with the EMA behaviour of the module docstring."""


def make_optimizer(train_config, learning_rate):
    """The optimizer named by ``train.optimizer`` with the config's settings and EMA."""
    ema = dict(use_ema=train_config.ema_decay > 0, ema_momentum=train_config.ema_decay or 0.99)
    name = train_config.optimizer
    if name == "rmsprop":
        return RMSprop(
            learning_rate=learning_rate,
            rho=train_config.rmsprop_rho,
            momentum=train_config.momentum,
            epsilon=train_config.epsilon,
            **ema,
        )
    if name == "sgd":
        return SGD(learning_rate=learning_rate, momentum=train_config.momentum, nesterov=True, **ema)
    if name == "adamw":
        # Decoupled weight decay is AdamW's own; the L2 term is then not added (see add_weight_decay).
        optimizer = AdamW(learning_rate=learning_rate, weight_decay=train_config.weight_decay, **ema)
        if train_config.weight_decay_on == "kernels":
            # Keras matches these against each variable's own name (``gamma``, ``beta``, ``bias``).
            optimizer.exclude_from_weight_decay(var_names=_NOT_KERNELS)
        return optimizer
    raise ValueError(f"unknown optimizer {name!r}; expected one of ['adamw', 'rmsprop', 'sgd']")


def add_weight_decay(model, weight_decay, on="kernels"):
    """Adds ``weight_decay / 2 * sum(w ** 2)`` to the model's losses, over conv and dense kernels
    (``on="kernels"``) or every trainable weight (``on="all"``).

    The reference release's ``weight_decay * tf.nn.l2_loss(w)`` on every non-batch-norm weight but
    biases; ``"kernels"`` is that (conv, depthwise, dense). Returns the number of weights decayed.
    """
    if on not in ("kernels", "all"):
        raise ValueError(f"weight decay on {on!r}; expected 'kernels' or 'all'")
    count = 0
    if weight_decay <= 0:
        return count
    regularizer = keras.regularizers.L2(weight_decay / 2.0)
    for variable in model.trainable_weights:
        if on == "all" or variable.path.endswith(_KERNELS):
            variable.regularizer = regularizer
            count += 1
    return count


def moving_statistics(model):
    """The model's batch-norm moving means and variances, in the model's order."""
    return [v for v in model.non_trainable_weights if v.path.endswith(_STATISTICS)]


def average_moving_statistics(model, optimizer):
    """Makes ``optimizer`` (built, with EMA) average ``model``'s batch-norm statistics too; the number
    of statistics averaged (0 without EMA)."""
    inner = _inner(optimizer)
    if not has_ema(inner):
        return 0
    inner.track_moving_statistics(moving_statistics(model))
    return len(inner.moving_statistics_averages)


def _inner(optimizer):
    # mixed_float16 wraps the optimizer in a LossScaleOptimizer; the EMA lives in the inner one.
    return getattr(optimizer, "inner_optimizer", optimizer)


def has_ema(optimizer):
    inner = _inner(optimizer)
    return bool(getattr(inner, "use_ema", False)) and bool(
        getattr(inner, "_model_variables_moving_average", None)
    )


@contextlib.contextmanager
def swap_ema_weights(model, optimizer):
    """Inside the block the model holds its EMA weights (and averaged batch-norm statistics, when the
    optimizer averages them); the training values come back after."""
    if not has_ema(optimizer):
        yield False
        return
    pairs = [
        (v, a)
        for v, a in zip(model.trainable_weights, _inner(optimizer)._model_variables_moving_average)
        if a is not None
    ] + list(getattr(_inner(optimizer), "moving_statistics_averages", []))
    saved = [ops.copy(v.value) for v, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield True
    finally:
        for (variable, _), value in zip(pairs, saved):
            variable.assign(value)
