"""Weight transfer between our models and ``keras.applications.EfficientNetV2*``, by layer name.

keras.applications names its layers ``stem_conv``, ``block2a_expand_conv``, ``top_bn``,
``predictions``...; ours are the same names, with each block a layer (``block2a``) whose sublayers are
named by the suffix (``expand_conv``). ``layer_map`` lists the pairs; the copy functions check that the
two models have exactly the same weighted layers and shapes and refuse otherwise.
"""

import keras

from efficientnetv2.blocks import FusedMBConv, MBConv
from efficientnetv2.variants import get_variant

__all__ = ["layer_map", "copy_weights_to", "copy_weights_from", "build_keras_application"]


def _block_sublayers(block):
    names = ("expand_conv", "expand_bn", "dwconv2", "bn", "project_conv", "project_bn")
    pairs = [(name, getattr(block, name, None)) for name in names]
    if block.se is not None:
        pairs += [("se_reduce", block.se.se_reduce), ("se_expand", block.se.se_expand)]
    return [(name, layer) for name, layer in pairs if layer is not None]


def layer_map(model):
    """``{keras.applications layer name: our layer}`` for every layer of ``model`` with weights."""
    mapping = {}
    for layer in model.layers:
        if isinstance(layer, (MBConv, FusedMBConv)):
            for suffix, sub in _block_sublayers(layer):
                mapping[f"{layer.name}_{suffix}"] = sub
        elif layer.weights:
            mapping[layer.name] = layer
    return mapping


def _pairs(model, app_model):
    ours = layer_map(model)
    theirs = {layer.name: layer for layer in app_model.layers if layer.weights}
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    if missing or extra:
        raise ValueError(
            f"models {model.name!r} and {app_model.name!r} do not match: layers only in "
            f"keras.applications {missing[:5]}{'...' if len(missing) > 5 else ''}, only in ours "
            f"{extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    pairs = []
    for name, layer in ours.items():
        other = theirs[name]
        a = [tuple(w.shape) for w in layer.weights]
        b = [tuple(w.shape) for w in other.weights]
        if a != b:
            raise ValueError(f"layer {name!r}: our weight shapes {a} differ from keras.applications' {b}")
        pairs.append((layer, other))
    return pairs


def copy_weights_to(model, app_model):
    """Copies every weight of our ``model`` into the keras.applications ``app_model``."""
    for ours, theirs in _pairs(model, app_model):
        theirs.set_weights(ours.get_weights())


def copy_weights_from(app_model, model):
    """Copies every weight of the keras.applications ``app_model`` into our ``model``."""
    for ours, theirs in _pairs(model, app_model):
        ours.set_weights(theirs.get_weights())


def build_keras_application(variant, num_classes=1000, include_top=True, input_shape=None, **kwargs):
    """The keras.applications model of ``variant`` with random weights (``weights=None``)."""
    spec = get_variant(variant)
    if not spec.keras_application:
        raise ValueError(
            f"EfficientNetV2-{spec.name.upper()} has no keras.applications counterpart "
            "(keras.applications has B0-B3, S, M and L)"
        )
    constructor = getattr(keras.applications, spec.keras_application)
    kwargs.setdefault("classifier_activation", None)
    return constructor(
        weights=None,
        include_top=include_top,
        classes=num_classes,
        input_shape=input_shape,
        **kwargs,
    )
