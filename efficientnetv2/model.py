"""The EfficientNetV2 model builder: stem, stages of MBConv/Fused-MBConv blocks, head."""

import keras

from efficientnetv2 import block_strings
from efficientnetv2.blocks import (
    CONV_KERNEL_INITIALIZER,
    DENSE_KERNEL_INITIALIZER,
    AdjustableDropout,
    FusedBatchNormalization,
    FusedMBConv,
    MBConv,
)
from efficientnetv2.variants import get_variant

__all__ = ["build_model", "build_model_from_config", "set_dropout_rate", "FEATURE_LEVELS"]

# keras.applications' normalization of B0-B3 inputs (ImageNet mean and std of [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_LEVELS = ("reduction_1", "reduction_2", "reduction_3", "reduction_4", "reduction_5")


def _preprocessing(kind, x):
    if kind == "minus_one_to_one":
        return keras.layers.Rescaling(1.0 / 128.0, offset=-1.0, name="rescaling")(x)
    if kind == "imagenet_mean_std":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        return keras.layers.Normalization(
            mean=list(IMAGENET_MEAN),
            variance=[s**2 for s in IMAGENET_STD],
            name="normalization",
        )(x)
    raise ValueError(f"unknown preprocessing {kind!r}")


def build_model(
    variant="s",
    num_classes=1000,
    include_top=True,
    include_preprocessing=True,
    input_shape=(None, None, 3),
    dropout_rate=None,
    drop_path_rate=0.2,
    classifier_activation=None,
    bn_momentum=0.99,
    bn_epsilon=1e-3,
    synchronized_bn=False,
    width=None,
    depth=None,
    blocks=None,
    head_filters=1280,
    pooling=None,
    name=None,
    zero_init_residual=False,
    weights=None,
):
    """Builds an EfficientNetV2 as a functional ``keras.Model``.

    Args:
        variant: a name (``"s"``, ``"efficientnetv2-s"``, ...) or a ``VariantSpec``.
        num_classes: outputs of the classifier (``include_top=True``).
        include_top: with the classifier; without it the model returns a dict of backbone
            features at the five reduction levels (strides 2, 4, 8, 16, 32) keyed by
            ``FEATURE_LEVELS`` (``reduction_5`` is after ``top_conv``), or, when ``pooling`` is
            ``"avg"``/``"max"``, the pooled ``top`` features.
        include_preprocessing: inputs are pixels in [0, 255], normalized inside the model as
            keras.applications does (B0-B3: ImageNet mean/std; S, M, L, XL: ``x / 128 - 1``).
        input_shape: ``(height, width, 3)``; ``None`` sizes accept any image size.
        dropout_rate: head dropout before the classifier; defaults to the variant's.
        drop_path_rate: stochastic-depth rate of the last block; block ``b`` of ``B`` gets
            ``drop_path_rate * b / B`` (as keras.applications and the reference release).
        classifier_activation: ``None`` returns logits; ``"softmax"`` probabilities.
        bn_momentum, bn_epsilon, synchronized_bn: batch-norm settings of every block.
        width, depth, blocks, head_filters: override the variant's multipliers, block strings
            (a list or comma-separated string) or head width, e.g. for tiny test models.
        name: the model's name (default ``efficientnetv2-<variant>``).
        zero_init_residual: the last batch norm of every residual block starts with scale 0, so
            each such block starts as the identity (a from-scratch option; weights load as usual).
        weights: ``None`` (random), a published name (``"imagenet"``, ``"imagenet21k"``,
            ``"imagenet21k-ft1k"``) or a path, loaded as ``train.init_checkpoint`` is; with another
            ``num_classes`` or ``include_top=False`` the backbone loads and the head is new (logged).

    The head's dropout is the layer named ``top_dropout``, always present (rate 0 included). Change
    it between training stages without rebuilding the model with ``set_dropout_rate(model, rate)``:
    it sets the layer's ``rate`` and, when the model is compiled, rebuilds the train function so the
    next step uses the new rate.
    """
    spec = get_variant(variant)
    width = spec.width if width is None else width
    depth = spec.depth if depth is None else depth
    stages = block_strings.decode_all(blocks) if blocks is not None else spec.block_args
    stages = [s.scaled(width, depth) for s in stages]
    dropout_rate = spec.dropout.end if dropout_rate is None else dropout_rate
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")

    inputs = keras.Input(shape=input_shape, name="image")
    x = _preprocessing(spec.preprocessing, inputs) if include_preprocessing else inputs
    bn = dict(momentum=bn_momentum, epsilon=bn_epsilon, synchronized=synchronized_bn)

    x = keras.layers.Conv2D(
        stages[0].in_filters,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name="stem_conv",
    )(x)
    x = FusedBatchNormalization(name="stem_bn", **bn)(x)
    x = keras.layers.Activation("silu", name="stem_activation")(x)

    features = {}
    total_blocks = sum(s.repeats for s in stages)
    index = 0
    for stage_number, stage in enumerate(stages, start=1):
        block_class = FusedMBConv if stage.fused else MBConv
        if stage.strides > 1:
            features[f"reduction_{len(features) + 1}"] = x
        for j in range(stage.repeats):
            x = block_class(
                in_filters=stage.in_filters if j == 0 else stage.out_filters,
                out_filters=stage.out_filters,
                expand_ratio=stage.expand_ratio,
                kernel_size=stage.kernel_size,
                strides=stage.strides if j == 0 else 1,
                se_ratio=stage.se_ratio,
                drop_path_rate=drop_path_rate * index / total_blocks,
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                synchronized_bn=synchronized_bn,
                zero_init_residual=zero_init_residual,
                name=f"block{stage_number}{_letters(j)}",
            )(x)
            index += 1

    x = keras.layers.Conv2D(
        block_strings.round_filters(head_filters, width),
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name="top_conv",
    )(x)
    x = FusedBatchNormalization(name="top_bn", **bn)(x)
    x = keras.layers.Activation("silu", name="top_activation")(x)
    model_name = name or f"efficientnetv2-{spec.name}"

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = AdjustableDropout(dropout_rate, name="top_dropout")(x)
        outputs = keras.layers.Dense(
            num_classes,
            activation=classifier_activation,
            kernel_initializer=DENSE_KERNEL_INITIALIZER,
            name="predictions",
            dtype="float32",
        )(x)
    elif pooling == "avg":
        outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype="float32")(x)
    elif pooling == "max":
        outputs = keras.layers.GlobalMaxPooling2D(name="max_pool", dtype="float32")(x)
    else:
        features[f"reduction_{len(features) + 1}"] = x
        if len(features) != len(FEATURE_LEVELS):
            raise ValueError(
                f"backbone features need stride-2 stages giving five reduction levels; these "
                f"blocks give {len(features)}"
            )
        outputs = features
    model = keras.Model(inputs, outputs, name=model_name)
    if weights is not None:
        # The one call from the model library into import/export: only when weights are asked for.
        from efficientnetv2.io.weights_import import load_pretrained  # noqa: PLC0415

        load_pretrained(model, weights, spec)
    return model


def build_model_from_config(model_config, num_classes, input_size=None, dropout_rate=None):
    """``build_model`` with the architecture of a run's ``model`` config section (``config.model``).

    The one place that turns the config's model keys into a model, for the trainer and for export
    alike. ``input_size`` fixes a square input (``None``: any size); ``dropout_rate`` is the head
    dropout (``None``: the variant's).
    """
    m = model_config
    return build_model(
        m.variant,
        num_classes=num_classes,
        input_shape=(input_size, input_size, 3),
        dropout_rate=dropout_rate,
        drop_path_rate=m.drop_path_rate,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        synchronized_bn=m.synchronized_bn,
        width=m.width,
        depth=m.depth,
        blocks=m.blocks,
        head_filters=m.head_filters,
        zero_init_residual=m.zero_init_residual,
    )

def _letters(index):
    """Block letters as keras.applications names them: a, b, ..., z, then aa, ab, ... ."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(97 + rest) + letters
    return letters


def set_dropout_rate(model, rate):
    """Sets the head dropout rate of a built model; the next training step uses it.

    Keras reads a ``Dropout`` layer's ``rate`` when it traces the train function, so when the model
    has already made one it is rebuilt (traced again on its next call).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    try:
        layer = model.get_layer("top_dropout")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no 'top_dropout' layer (include_top=False?)") from None
    if layer.rate == rate:
        return
    layer.rate = float(rate)
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
