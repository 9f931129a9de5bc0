"""The building blocks of EfficientNetV2 as Keras 3 layers (``keras`` and ``keras.ops``). Under the
TensorFlow backend, batch norm in training and conv + batch norm in inference take faster TensorFlow
kernels: those paths live in ``tf_fast_paths``, apart from the blocks' ``call``s.

Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021, Figure 2 and Table 4.
Sublayer names follow ``keras.applications.EfficientNetV2*`` (``expand_conv``, ``dwconv2``, ``bn``,
``se_reduce``, ``project_conv``, ...), so that a block named ``block2a`` here holds the weights of the
layers named ``block2a_<sublayer>`` there.
"""

import keras
from keras import ops

from efficientnetv2 import tf_fast_paths
from efficientnetv2.tf_fast_paths import FusedBatchNormalization

__all__ = [
    "AdjustableDropout",
    "StochasticDepth",
    "FusedBatchNormalization",
    "SqueezeExcite",
    "MBConv",
    "FusedMBConv",
]

# The reference release's initializers: variance scaling for convolutions, uniform for the classifier.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
# The classifier's scale follows its inputs (fan_in), not the class count: the reference's fan_out gives
# logits an initial scale that grows as 1 / sqrt(num_classes), right at 1,000 classes (bound 0.032; fan_in
# over B0's 1,280 features gives 0.028) but 10 times too large at 10: a from-scratch 10-class run then
# starts with logits of std 2.8 in training mode, a loss of 3.35 (ln 10 = 2.30) and 7x larger gradients,
# and learns markedly slower in its first epochs than keras' own head (on imagenette).
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


@keras.saving.register_keras_serializable(package="efficientnetv2")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch for whole samples (Huang et al., 2016), as in EfficientNetV2.

    In training, each sample's branch is kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``; in inference the input passes unchanged. Applied to the branch only: the block
    adds the shortcut itself.

    Args:
        rate: probability of dropping the branch, in [0, 1).
        seed: optional int seed of the drop masks.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        # The 0 or 1/keep factor is made on the (batch, 1, 1, 1) mask, so the full-size tensor
        # sees one multiply (forward and backward) instead of a multiply and a divide.
        scale = ops.cast(noise < keep, inputs.dtype) * ops.cast(1.0 / keep, inputs.dtype)
        return inputs * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="efficientnetv2")
class AdjustableDropout(keras.layers.Layer):
    """Dropout (Srivastava et al., 2014) whose ``rate`` may be changed after it is built, 0 included.

    Keras' own Dropout creates its random-seed state only when built with a positive rate, so one
    built at rate 0 could never be raised; this one always has it. The rate is read when the
    training function is traced: see ``efficientnetv2.set_dropout_rate``.

    Args:
        rate: fraction of units dropped in training, in [0, 1).
        seed: optional int seed.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False):
        if training and self.rate > 0.0:
            return keras.random.dropout(inputs, self.rate, seed=self.seed_generator)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _batch_norm(name, momentum, epsilon, synchronized, dtype, gamma_initializer="ones"):
    return FusedBatchNormalization(
        momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name, dtype=dtype,
        gamma_initializer=gamma_initializer,
    )


def _conv(filters, kernel_size, strides, name, dtype, use_bias=False, activation=None):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        activation=activation,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="efficientnetv2")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation (Hu et al., 2018): channel gates from globally pooled features.

    Global average pool, 1x1 conv to ``se_filters`` with ``activation``, 1x1 conv back to
    ``filters`` with a sigmoid, multiply. Both convolutions have biases, as in the reference.

    Args:
        filters: channels of the input (and output).
        se_filters: channels of the bottleneck; EfficientNetV2 uses
            ``max(1, int(block_input_filters * se_ratio))``.
        activation: activation of the bottleneck.
    """

    def __init__(self, filters, se_filters, activation="silu", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.se_filters = int(se_filters)
        self.activation = activation
        self.se_reduce = _conv(
            self.se_filters, 1, 1, "se_reduce", self.dtype_policy, use_bias=True, activation=activation
        )
        self.se_expand = _conv(
            self.filters, 1, 1, "se_expand", self.dtype_policy, use_bias=True, activation="sigmoid"
        )

    def build(self, input_shape):
        pooled = (input_shape[0], 1, 1, input_shape[-1])
        self.se_reduce.build(pooled)
        self.se_expand.build(pooled[:-1] + (self.se_filters,))
        self.built = True

    def call(self, inputs):
        gates = ops.mean(inputs, axis=(1, 2), keepdims=True)
        gates = self.se_expand(self.se_reduce(gates))
        return inputs * gates

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "se_filters": self.se_filters,
            "activation": self.activation,
        }


class _Block(keras.layers.Layer):
    """Arguments, residual rule and config shared by MBConv and FusedMBConv."""

    def __init__(
        self,
        in_filters,
        out_filters,
        expand_ratio=1.0,
        kernel_size=3,
        strides=1,
        se_ratio=0.0,
        drop_path_rate=0.0,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        synchronized_bn=False,
        activation="silu",
        zero_init_residual=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_filters = int(in_filters)
        self.out_filters = int(out_filters)
        self.expand_ratio = expand_ratio
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.se_ratio = float(se_ratio)
        self.drop_path_rate = float(drop_path_rate)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.synchronized_bn = bool(synchronized_bn)
        self.activation = activation
        self.zero_init_residual = bool(zero_init_residual)
        self.expanded_filters = int(self.in_filters * expand_ratio)
        self.has_residual = self.strides == 1 and self.in_filters == self.out_filters
        # A residual block whose last batch norm starts at scale 0 starts as the identity (Goyal et al.
        # 2017): the network starts shallow, which trains faster from scratch in short runs.
        self._project_gamma = "zeros" if self.has_residual and self.zero_init_residual else "ones"
        self.se = None
        if 0.0 < self.se_ratio <= 1.0:
            self.se = SqueezeExcite(
                self.expanded_filters,
                max(1, int(self.in_filters * self.se_ratio)),
                activation=activation,
                name="se",
                dtype=self.dtype_policy,
            )
        self.drop = None
        if self.has_residual and self.drop_path_rate > 0.0:
            self.drop = StochasticDepth(self.drop_path_rate, name="drop", dtype=self.dtype_policy)

    def _bn(self, name, gamma_initializer="ones"):
        return _batch_norm(
            name, self.bn_momentum, self.bn_epsilon, self.synchronized_bn, self.dtype_policy,
            gamma_initializer,
        )

    def _conv(self, filters, kernel_size, strides, name):
        return _conv(filters, kernel_size, strides, name, self.dtype_policy)

    def _conv_bn(self, conv, bn, x, training):
        """``bn(conv(x))``; in inference, where it can, one convolution with the batch norm folded
        in: the same function, one kernel fewer per layer."""
        if training or not tf_fast_paths.foldable(conv, bn):
            return bn(conv(x), training=training)
        return tf_fast_paths.folded_conv_bn(conv, bn, x)

    def _act(self, x):
        return keras.activations.get(self.activation)(x)

    def _shortcut(self, branch, inputs, training):
        if not self.has_residual:
            return branch
        if self.drop is not None:
            branch = self.drop(branch, training=training)
        return branch + inputs

    def _output_shape(self, input_shape):
        def down(size):
            return None if size is None else -(-size // self.strides)

        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), self.out_filters)

    def compute_output_shape(self, input_shape):
        return self._output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "in_filters": self.in_filters,
            "out_filters": self.out_filters,
            "expand_ratio": self.expand_ratio,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "se_ratio": self.se_ratio,
            "drop_path_rate": self.drop_path_rate,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "synchronized_bn": self.synchronized_bn,
            "activation": self.activation,
            "zero_init_residual": self.zero_init_residual,
        }


@keras.saving.register_keras_serializable(package="efficientnetv2")
class MBConv(_Block):
    """Mobile inverted bottleneck (Sandler et al., 2018) with squeeze-and-excitation.

    EfficientNetV2 Figure 2 (left): 1x1 expand conv, BN, SiLU, kxk depthwise conv (strided), BN,
    SiLU, SE, 1x1 project conv, BN; plus the shortcut (with stochastic depth) when the block keeps
    stride 1 and its width. With ``expand_ratio == 1`` there is no expand conv.

    Args:
        in_filters, out_filters: channels in and out.
        expand_ratio: width of the inner layers relative to ``in_filters``.
        kernel_size, strides: of the depthwise convolution.
        se_ratio: SE bottleneck width relative to ``in_filters``; 0 disables SE.
        drop_path_rate: stochastic-depth drop probability of the residual branch.
        bn_momentum, bn_epsilon: batch-norm settings; ``synchronized_bn`` syncs statistics
            across replicas under a ``tf.distribute`` strategy (TensorFlow backend).
        activation: activation of the inner layers.
    """

    def __init__(self, in_filters, out_filters, **kwargs):
        super().__init__(in_filters, out_filters, **kwargs)
        self.expand_conv = self.expand_bn = None
        if self.expand_ratio != 1:
            self.expand_conv = self._conv(self.expanded_filters, 1, 1, "expand_conv")
            self.expand_bn = self._bn("expand_bn")
        self.dwconv2 = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            strides=self.strides,
            padding="same",
            use_bias=False,
            depthwise_initializer=CONV_KERNEL_INITIALIZER,
            name="dwconv2",
            dtype=self.dtype_policy,
        )
        self.bn = self._bn("bn")
        self.project_conv = self._conv(self.out_filters, 1, 1, "project_conv")
        self.project_bn = self._bn("project_bn", self._project_gamma)

    def build(self, input_shape):
        expanded = tuple(input_shape[:-1]) + (self.expanded_filters,)
        if self.expand_conv is not None:
            self.expand_conv.build(input_shape)
            self.expand_bn.build(expanded)
        self.dwconv2.build(expanded)
        inner = self._output_shape(input_shape)[:-1] + (self.expanded_filters,)
        self.bn.build(inner)
        if self.se is not None:
            self.se.build(inner)
        self.project_conv.build(inner)
        self.project_bn.build(self._output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=False):
        x = inputs
        if self.expand_conv is not None:
            x = self._act(self._conv_bn(self.expand_conv, self.expand_bn, x, training))
        x = self._act(self._conv_bn(self.dwconv2, self.bn, x, training))
        if self.se is not None:
            x = self.se(x)
        x = self._conv_bn(self.project_conv, self.project_bn, x, training)
        return self._shortcut(x, inputs, training)


@keras.saving.register_keras_serializable(package="efficientnetv2")
class FusedMBConv(_Block):
    """Fused-MBConv (EfficientNetV2 Figure 2, right): one regular kxk conv replaces expand + depthwise.

    kxk conv (strided) to ``in_filters * expand_ratio``, BN, SiLU, [SE], 1x1 project conv, BN. With
    ``expand_ratio == 1`` the block is a single kxk conv, BN, SiLU. Shortcut with stochastic depth
    when the block keeps stride 1 and its width. Arguments as for ``MBConv``.
    """

    def __init__(self, in_filters, out_filters, **kwargs):
        super().__init__(in_filters, out_filters, **kwargs)
        self.expand_conv = self.expand_bn = None
        if self.expand_ratio != 1:
            self.expand_conv = self._conv(
                self.expanded_filters, self.kernel_size, self.strides, "expand_conv"
            )
            self.expand_bn = self._bn("expand_bn")
            self.project_conv = self._conv(self.out_filters, 1, 1, "project_conv")
        else:
            self.project_conv = self._conv(
                self.out_filters, self.kernel_size, self.strides, "project_conv"
            )
        self.project_bn = self._bn("project_bn", self._project_gamma)

    def build(self, input_shape):
        output_shape = self._output_shape(input_shape)
        inner = input_shape
        if self.expand_conv is not None:
            self.expand_conv.build(input_shape)
            inner = output_shape[:-1] + (self.expanded_filters,)
            self.expand_bn.build(inner)
        if self.se is not None:
            self.se.build(inner)
        self.project_conv.build(inner)
        self.project_bn.build(output_shape)
        self.built = True

    def call(self, inputs, training=False):
        x = inputs
        if self.expand_conv is not None:
            x = self._act(self._conv_bn(self.expand_conv, self.expand_bn, x, training))
        if self.se is not None:
            x = self.se(x)
        x = self._conv_bn(self.project_conv, self.project_bn, x, training)
        if self.expand_conv is None:
            x = self._act(x)
        return self._shortcut(x, inputs, training)
