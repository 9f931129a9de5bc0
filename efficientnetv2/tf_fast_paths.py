"""TensorFlow-only speed paths of the blocks, each used only under the TensorFlow backend and only
where it computes what Keras' own ops compute (to float rounding); every other backend runs the
plain ``keras.ops`` path of ``blocks``.

- ``FusedBatchNormalization``: batch norm in training through TensorFlow's fused kernel.
- ``foldable`` / ``folded_conv_bn``: a convolution followed by batch norm, in inference, as one
  convolution with the batch norm folded into its kernel and bias.
"""

import keras
from keras import ops

__all__ = ["FusedBatchNormalization", "foldable", "folded_conv_bn"]


@keras.saving.register_keras_serializable(package="efficientnetv2")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel where it can be.

    In training, Keras 3 normalizes with separate ops (moments, then ``tf.nn.batch_normalization``;
    in float32 after casting bfloat16 inputs up and back), whose gradient is many passes over the
    activations; TensorFlow's ``FusedBatchNormV3`` (oneDNN on CPU, cuDNN on GPU) does it in one op
    forward and one backward, in the input's precision with float32 statistics. Under the
    TensorFlow backend, in training, for 4-D channels-last inputs without a mask, renorm or
    synchronized statistics, this layer uses it; otherwise (inference included), and under every
    other backend, it is Keras' layer unchanged. The variables, their names and updates are Keras'
    (the moving variance gets the biased batch variance, as Keras' does), so weights move both ways
    with keras.applications; results agree to float rounding. It is there for speed: the figures
    are benchmarks/model_throughput.py's, in docs/benchmarks.md.
    """

    # The fused kernel raises smaller epsilons to this; Keras' layer does not.
    _FUSED_MIN_EPSILON = 1.001e-5

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.epsilon >= self._FUSED_MIN_EPSILON
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16", "float16")
        )

    def call(self, inputs, training=None, mask=None):
        # Inference stays Keras' (a multiply and an add per element): the fused kernel gains
        # nothing there on CPU (oneDNN).
        if not (training and self.trainable) or not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only under the TensorFlow backend

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
        )
        # The kernel returns the unbiased (Bessel-corrected) variance; Keras averages the biased
        # one into its moving variance.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance = variance * ((count - 1.0) / count)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def foldable(conv, bn):
    """Whether ``bn(conv(x))`` in inference can be one convolution (see ``folded_conv_bn``)."""
    if keras.backend.backend() != "tensorflow":
        return False  # only TensorFlow's kernels need it; XLA fuses the elementwise ops anyway
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        plain = conv.depth_multiplier == 1
    else:
        plain = type(conv) is keras.layers.Conv2D and conv.groups == 1
    return (
        plain
        and not conv.use_bias
        and conv.activation is keras.activations.linear
        and tuple(conv.dilation_rate) == (1, 1)
        and conv.data_format == "channels_last"
        and bn.center
        and bn.scale
        and bn.axis in (-1, 3)
    )


def folded_conv_bn(conv, bn, x):
    """``bn(conv(x), training=False)`` as one convolution with the batch norm in its kernel and bias.

    ``bn`` is ``x * gamma / sqrt(var + eps) + beta - mean * gamma / sqrt(var + eps)`` per channel,
    so ``conv(x, kernel * scale) + (beta - mean * scale)``. The bias add is TensorFlow's ``BiasAdd``,
    which Grappler fuses into the convolution (one oneDNN op instead of a convolution, a multiply
    and an add over the activations).
    """
    import tensorflow as tf  # only under the TensorFlow backend (see foldable)

    scale = bn.gamma * ops.rsqrt(bn.moving_variance + bn.epsilon)
    kernel = ops.cast(conv.kernel, "float32")
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = ops.cast(kernel * ops.expand_dims(scale, -1), x.dtype)
        y = ops.depthwise_conv(x, kernel, strides=conv.strides, padding=conv.padding)
    else:
        kernel = ops.cast(kernel * scale, x.dtype)
        y = ops.conv(x, kernel, strides=conv.strides, padding=conv.padding)
    bias = ops.cast(bn.beta - bn.moving_mean * scale, x.dtype)
    return tf.nn.bias_add(y, bias)
