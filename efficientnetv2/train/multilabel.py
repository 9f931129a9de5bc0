"""ImageNet-21k's multi-label targets: the paper's loss and a cheap metric.

The paper (Section 5) trains ImageNet-21k with a softmax cross-entropy on labels normalized to sum
to 1: an image with k labels puts 1/k on each. The reference release does the same (its default
loss with ``multiclass``: ``labels /= sum(labels)``). Label smoothing, when set, applies after the
normalization, as in the reference.
"""

import keras
from keras import ops

__all__ = ["normalize_targets", "NormalizedSoftmaxCrossEntropy", "TopOneInLabels"]


def normalize_targets(targets):
    """Multi-hot (or mixed) targets [B, K] -> rows summing to 1; an all-zero row stays zero."""
    total = ops.sum(targets, axis=-1, keepdims=True)
    return targets / ops.maximum(total, ops.cast(1e-12, targets.dtype))


@keras.saving.register_keras_serializable(package="efficientnetv2")
class NormalizedSoftmaxCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy from logits on targets normalized to sum to 1."""

    def __init__(self, label_smoothing=0.0, name="normalized_softmax_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing
        self._cross_entropy = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def call(self, y_true, y_pred):
        return self._cross_entropy(normalize_targets(ops.cast(y_true, y_pred.dtype)), y_pred)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="efficientnetv2")
class TopOneInLabels(keras.metrics.MeanMetricWrapper):
    """The fraction of images whose top prediction is one of their labels (the reference's
    precision@1 on ImageNet-21k); one gather per image, cheap over 21k classes."""

    def __init__(self, name="top1_any", dtype=None):
        super().__init__(_top_one_in_labels, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _top_one_in_labels(y_true, y_pred):
    top = ops.argmax(y_pred, axis=-1)
    hit = ops.take_along_axis(y_true, ops.expand_dims(top, -1), axis=-1)[:, 0]
    return ops.cast(hit > 0, "float32")
