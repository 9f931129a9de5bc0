"""ONNX export of the inference model, through tf2onnx.

``model.onnx`` takes ``images`` float32 [batch, S, S, 3], RGB pixels in [0, 255] (the SavedModel's
``serving_default`` input at the evaluation size; the batch dimension is dynamic) and returns
``probabilities`` float32 [batch, classes].

Why tf2onnx directly rather than ``model.export(format="onnx")``: on the TensorFlow backend Keras'
exporter is tf2onnx too, and it turns the tensors that the model's ``Normalization`` layer captures
(its mean and variance) into two extra required graph inputs, which no caller can feed. Here the
function is frozen first (``convert_variables_to_constants_v2``), which folds every capture into
the graph, and the frozen graph is converted.

tf2onnx leaves an op it cannot map in the graph as a TensorFlow op (and logs it); ``write_onnx``
refuses such a graph with ``OnnxExportError`` naming the op, instead of writing a file that
onnxruntime cannot load.
"""

import tensorflow as tf

__all__ = ["OnnxExportError", "available", "missing_message", "write_onnx", "OPSET", "INPUT", "OUTPUT"]

OPSET = 17  # Fixed, so that what an export writes does not change with the installed tf2onnx's default.
INPUT, OUTPUT = "images", "probabilities"
# onnxruntime's own operators, which tf2onnx emits for a few TensorFlow ops ONNX has no equal of.
_RUNTIME_DOMAINS = ("com.microsoft",)


class OnnxExportError(ValueError):
    """The model cannot be written as ONNX (an op the converter cannot handle, or no converter)."""


def available():
    """Whether the ONNX converter (tf2onnx) and onnx are installed."""
    try:
        import onnx  # noqa: F401, PLC0415
        import tf2onnx  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def missing_message():
    return ('model.onnx needs the ONNX converter: pip install -e ".[onnx]" (tf2onnx, onnx, onnxruntime), '
            "or set export.onnx=false")


def _frozen_graph(model, image_size):
    from tensorflow.python.framework import convert_to_constants  # noqa: PLC0415 only for ONNX

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT)])
    def infer(images):
        return {OUTPUT: model(images, training=False)}

    frozen = convert_to_constants.convert_variables_to_constants_v2(infer.get_concrete_function())
    (inp,), (out,) = frozen.inputs, frozen.outputs
    return frozen.graph.as_graph_def(), inp.name, out.name


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _unmapped_ops(model_proto):
    """(op type, node name) of every node that is no ONNX operator: a TensorFlow op the converter kept."""
    import onnx  # noqa: PLC0415

    return [(node.op_type, node.name) for node in model_proto.graph.node
            if node.domain not in _RUNTIME_DOMAINS and not onnx.defs.has(node.op_type, node.domain)]


def write_onnx(model, path, image_size):
    """Writes ``model`` (float32 images [batch, S, S, 3] in [0, 255] -> probabilities) as ONNX to ``path``.

    Raises ``OnnxExportError`` when the converter is not installed or cannot handle an op (naming
    it); nothing is written then.
    """
    if not available():
        raise OnnxExportError(missing_message())
    import onnx  # noqa: PLC0415 an optional dependency
    import tf2onnx  # noqa: PLC0415

    graph_def, input_name, output_name = _frozen_graph(model, int(image_size))
    try:
        model_proto, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=[input_name], output_names=[output_name], opset=OPSET,
            tensors_to_rename={input_name: INPUT, output_name: OUTPUT})
    except Exception as e:  # noqa: BLE001 tf2onnx raises what its op handlers raise.
        raise OnnxExportError(f"ONNX converter (tf2onnx) failed: {_first_line(e)}") from e
    unmapped = _unmapped_ops(model_proto)
    if unmapped:
        op, node = unmapped[0]
        others = sorted({kind for kind, _ in unmapped[1:]} - {op})
        raise OnnxExportError(
            f"ONNX converter (tf2onnx, opset {OPSET}) cannot handle op {op} (node {node})"
            + (f" nor {', '.join(others)}" if others else "")
            + "; model.onnx not written (set export.onnx=false to skip it)")
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the converted ONNX model is invalid: {_first_line(e)}") from e
    with open(path, "wb") as f:
        f.write(model_proto.SerializeToString())


def write_as_configured(model, path, image_size, mode):
    """``write_onnx`` as ``config.export.onnx`` says: "" when written, else why it was skipped.

    "false" skips; "auto" skips with a warning when the converter is missing; otherwise a failure
    (or, with "true", a missing converter) raises ``OnnxExportError``.
    """
    from absl import logging  # noqa: PLC0415

    if mode == "false":
        return "export.onnx=false"
    if mode == "auto" and not available():
        logging.warning("No model.onnx: %s.", missing_message())
        return missing_message()
    write_onnx(model, path, image_size)
    return ""
