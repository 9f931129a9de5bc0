"""The paper's optimizer: RMSProp with an EMA of the weights, and L2 weight decay on kernels.

Two departures from Keras' stock optimizer EMA, both needed for a long, resumable run:

- Keras' ``fit`` ends by overwriting the model's weights with their EMA
  (``finalize_variable_values``). The trainer calls ``fit`` once per epoch, so that would replace the
  training weights by their average every epoch. Here finalize does nothing
  (``keras_compat.KeepTrainingWeightsAtEndOfFit``); evaluation and export swap the EMA weights in
  explicitly (``swap_ema_weights``) and swap them back.
- The EMA decay warms up as in the reference release, ``min(decay, (1 + step) / (10 + step))``, so
  that a short run's average is not stuck at the initial weights.
"""

import contextlib

import keras
from keras import ops

from efficientnetv2.train.keras_compat import KeepTrainingWeightsAtEndOfFit

__all__ = ["make_optimizer", "add_weight_decay", "swap_ema_weights", "has_ema"]


class _EMAMixin(KeepTrainingWeightsAtEndOfFit):
    """Keras optimizer EMA with decay warmup and without the end-of-fit overwrite."""

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        decay = ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
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
        return AdamW(learning_rate=learning_rate, weight_decay=train_config.weight_decay, **ema)
    raise ValueError(f"unknown optimizer {name!r}; expected one of ['adamw', 'rmsprop', 'sgd']")


def add_weight_decay(model, weight_decay):
    """Adds ``weight_decay / 2 * sum(w ** 2)`` over conv and dense kernels to the model's losses.

    The reference release's ``weight_decay * tf.nn.l2_loss(w)`` on every non-batch-norm weight but
    biases; here on kernels only (conv, depthwise, dense). Returns the number of kernels decayed.
    """
    count = 0
    if weight_decay <= 0:
        return count
    regularizer = keras.regularizers.L2(weight_decay / 2.0)
    for variable in model.trainable_weights:
        if variable.path.endswith(("/kernel", "/depthwise_kernel")):
            variable.regularizer = regularizer
            count += 1
    return count


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
    """Inside the block the model holds its EMA weights; the training weights come back after."""
    if not has_ema(optimizer):
        yield False
        return
    pairs = [
        (v, a)
        for v, a in zip(model.trainable_weights, _inner(optimizer)._model_variables_moving_average)
        if a is not None
    ]
    saved = [ops.copy(v.value) for v, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield True
    finally:
        for (variable, _), value in zip(pairs, saved):
            variable.assign(value)
