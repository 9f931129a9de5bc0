"""Multiply-adds of one forward pass, for one image: what papers on EfficientNet call "FLOPs".

Counted, one multiply-add each (bias additions, if any, folded in):

- ``Conv2D``: output height x output width x kernel height x kernel width x input channels
  (per group) x output channels; the stem, the expand/project convolutions, the head's
  ``top_conv`` and the two 1x1 convolutions of squeeze-and-excitation (on a 1x1 map);
- ``DepthwiseConv2D``: output height x output width x kernel height x kernel width x channels
  (x depth multiplier);
- ``Dense``: input features x outputs (the classifier).

Not counted: batch normalization, activations, pooling, the SE gating multiply, residual additions,
stochastic depth, dropout and input rescaling, all linear in the activations' size and together a few
percent of the total. This is how the EfficientNet papers count: EfficientNetV2-S at 384 px is about
8.4-8.8 billion (PAPER.md section 3), and so is ``count_flops("s", 384)``.

``count_flops`` takes a variant (name or ``VariantSpec``, computed from the block strings without
building anything) or any built ``keras.Model`` (ours, keras.applications', ...: it walks the
layers and reads each convolution's input shape from how it was built).
"""

import math

import keras

from efficientnetv2 import block_strings
from efficientnetv2.variants import get_variant

__all__ = ["count_flops"]


def count_flops(
    variant_or_model,
    image_size=None,
    num_classes=1000,
    include_top=True,
    width=None,
    depth=None,
    blocks=None,
    head_filters=1280,
):
    """Multiply-adds of one forward pass of one ``image_size`` x ``image_size`` image.

    Args:
        variant_or_model: a variant name, a ``VariantSpec``, or a built ``keras.Model``.
        image_size: the image side in pixels; a model's own input size when omitted (a model
            built for any size, ``(None, None, 3)``, needs it: it is then cloned at this size).
        num_classes, include_top, width, depth, blocks, head_filters: for a variant, as in
            ``build_model`` (``include_top=False`` counts up to ``top_conv``); ignored for a model.
    """
    if isinstance(variant_or_model, keras.Model):
        return _count_model(variant_or_model, image_size)
    if image_size is None:
        raise ValueError("count_flops of a variant needs image_size")
    spec = get_variant(variant_or_model)
    width = spec.width if width is None else width
    depth = spec.depth if depth is None else depth
    stages = block_strings.decode_all(blocks) if blocks is not None else spec.block_args
    stages = [s.scaled(width, depth) for s in stages]
    head = block_strings.round_filters(head_filters, width) if head_filters else 0
    return _count_stages(stages, int(image_size), head, num_classes if include_top else 0)


def _down(size, strides):
    return -(-size // strides)  # "same" padding


def _block_flops(in_filters, out_filters, expand_ratio, kernel, se_ratio, fused, size_in, size_out):
    """Multiply-adds of one MBConv or Fused-MBConv block (see ``efficientnetv2.blocks``)."""
    expanded = int(in_filters * expand_ratio)
    pixels_in, pixels_out = size_in * size_in, size_out * size_out
    total = 0
    if 0.0 < se_ratio <= 1.0:
        total += 2 * expanded * max(1, int(in_filters * se_ratio))  # two 1x1 convs on 1x1
    if fused:
        if expand_ratio != 1:
            total += pixels_out * kernel * kernel * in_filters * expanded  # kxk expand, strided
            total += pixels_out * expanded * out_filters  # 1x1 project
        else:
            total += pixels_out * kernel * kernel * in_filters * out_filters  # kxk, strided
        return total
    if expand_ratio != 1:
        total += pixels_in * in_filters * expanded  # 1x1 expand
    total += pixels_out * kernel * kernel * expanded  # depthwise, strided
    total += pixels_out * expanded * out_filters  # 1x1 project
    return total


def _count_stages(stages, image_size, head_filters, num_classes):
    size = _down(image_size, 2)
    total = size * size * 3 * 3 * 3 * stages[0].in_filters  # stem: 3x3, stride 2
    for stage in stages:
        for j in range(stage.repeats):
            strides = stage.strides if j == 0 else 1
            in_filters = stage.in_filters if j == 0 else stage.out_filters
            out_size = _down(size, strides)
            total += _block_flops(
                in_filters, stage.out_filters, stage.expand_ratio, stage.kernel_size,
                stage.se_ratio, stage.fused, size, out_size,
            )
            size = out_size
    if head_filters:
        total += size * size * stages[-1].out_filters * head_filters  # top_conv, 1x1
    if num_classes:
        total += (head_filters or stages[-1].out_filters) * num_classes  # classifier
    return int(total)


def _count_model(model, image_size):
    input_shape = tuple(model.inputs[0].shape[1:])
    if image_size is not None and tuple(input_shape[:2]) != (image_size, image_size):
        if all(d is not None for d in input_shape[:2]):
            raise ValueError(
                f"model {model.name!r} takes {input_shape[:2]} images, not {image_size}; build it "
                "for (None, None, 3) or pass image_size=None"
            )
        model = keras.models.clone_model(
            model, input_tensors=keras.Input((image_size, image_size) + input_shape[2:])
        )
    elif any(d is None for d in input_shape[:2]):
        raise ValueError(f"model {model.name!r} takes any image size: give image_size")
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            total += _layer_flops(layer)
    return int(total)


def _layer_flops(layer):
    built_with = layer.get_build_config()
    if not built_with or "input_shape" not in built_with:
        raise ValueError(f"layer {layer.name!r} is not built; cannot count its multiply-adds")
    input_shape = tuple(built_with["input_shape"])
    kernel = math.prod(layer.kernel.shape)
    output_shape = layer.compute_output_shape(input_shape)
    # Positions the kernel is applied at: the output's spatial positions (convolutions) or the
    # input's leading non-batch, non-feature dimensions (Dense on a sequence, say).
    positions = output_shape[1:-1] if not isinstance(layer, keras.layers.Dense) else input_shape[1:-1]
    if any(d is None for d in positions):
        raise ValueError(f"layer {layer.name!r} was built for {input_shape}: unknown size")
    return math.prod(positions) * kernel
