"""ONNX export of the inference model, through tf2onnx, in a process of its own.

``model.onnx`` takes ``images`` float32 [batch, S, S, 3], RGB pixels in [0, 255] (the SavedModel's
``serving_default`` input at the evaluation size; the batch dimension is dynamic) and returns
``probabilities`` float32 [batch, classes].

Why tf2onnx directly rather than ``model.export(format="onnx")``: on the TensorFlow backend Keras'
exporter is tf2onnx too, and it turns the tensors that the model's ``Normalization`` layer captures
(its mean and variance) into two extra required graph inputs, which no caller can feed. Here the
function is frozen first (``convert_variables_to_constants_v2``'s steps), which folds every capture
into the graph, and the frozen graph is converted.

Why a child process: the conversion needs several times the model's size in memory, and when that
runs out the kernel kills a process. The frozen GraphDef goes to a child on its stdin, the child
asks the kernel to kill it first, and its death is one ``OnnxOutOfMemory`` line here; the calling
process, and an export's other formats, are not touched. The child needs no Keras model, so any
model that freezes can be converted. docs/export.md has the measured peak memory per variant.

tf2onnx leaves an op it cannot map in the graph as a TensorFlow op (and logs it); the conversion
refuses such a graph with ``OnnxExportError`` naming the op, instead of writing a file that
onnxruntime cannot load.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile

import tensorflow as tf

__all__ = ["OnnxExportError", "OnnxOutOfMemory", "available", "missing_message", "write_onnx",
           "write_as_configured", "estimated_peak_bytes", "OPSET", "INPUT", "OUTPUT"]

OPSET = 17  # Fixed, so that what an export writes does not change with the installed tf2onnx's default.
INPUT, OUTPUT = "images", "probabilities"
# onnxruntime's own operators, which tf2onnx emits for a few TensorFlow ops ONNX has no equal of.
_RUNTIME_DOMAINS = ("com.microsoft",)
# The child's peak resident memory, fitted to the variants' measured peaks (docs/export.md): a fixed
# part (TensorFlow and tf2onnx loaded) and a part per parameter (the GraphDef's copies in grappler).
_PEAK_FIXED_BYTES = 0.75 * 2**30
_PEAK_BYTES_PER_PARAMETER = 52
# Refused before starting only when clearly short: part of the child's resident memory is
# TensorFlow's code, shared with the calling process, and the fit is not exact.
_REFUSE_BELOW = 0.8
_GIB = 2**30


class OnnxExportError(ValueError):
    """The model cannot be written as ONNX (an op the converter cannot handle, or no converter)."""


class OnnxOutOfMemory(OnnxExportError):
    """The conversion ran out of memory, or would have: the machine, not the model, is the problem."""


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


def estimated_peak_bytes(num_params):
    """The conversion's peak resident memory for a model of ``num_params`` parameters, as measured."""
    return _PEAK_FIXED_BYTES + _PEAK_BYTES_PER_PARAMETER * num_params


def _out_of_memory(name, what):
    return OnnxOutOfMemory(f"ONNX conversion of {name} {what}; the other formats are written; "
                           "rerun with more memory or export.onnx=false")


def _memory_available():
    """MemAvailable from /proc/meminfo in bytes; None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(name, num_params):
    needed, free = estimated_peak_bytes(num_params), _memory_available()
    if free is not None and free < _REFUSE_BELOW * needed:
        raise _out_of_memory(name, f"needs about {needed / _GIB:.1f} GiB of memory and "
                                   f"{free / _GIB:.1f} GiB is available (not started)")


def _frozen_graph(model, image_size):
    """(GraphDef, input name, output name) of ``model`` on float32 [batch, S, S, 3], its variables
    turned into constants: ``convert_variables_to_constants_v2`` without its last step, which builds
    a function from the frozen graph that holds another copy of the weights in this process for as
    long as it lives (TensorFlow's function library keeps it); only the GraphDef is needed."""
    from tensorflow.python.framework import convert_to_constants as freezing  # noqa: PLC0415 only for ONNX

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT)])
    def infer(images):
        return {OUTPUT: model(images, training=False)}

    function = infer.get_concrete_function()
    data = freezing._FunctionConverterDataInEager(  # noqa: SLF001 TensorFlow 2.21's own steps
        func=function, lower_control_flow=True, aggressive_inlining=False)
    graph_def, _ = freezing._replace_variables_by_constants(converter_data=data)  # noqa: SLF001
    return graph_def, function.inputs[0].name, function.outputs[0].name


def write_onnx(model, path, image_size, name="the model"):
    """Writes ``model`` (float32 images [batch, S, S, 3] in [0, 255] -> probabilities) as ONNX to
    ``path``, converting in a child process. Returns the child's peak resident memory in bytes.

    Raises ``OnnxExportError`` when the converter is not installed or cannot handle an op (naming
    it), ``OnnxOutOfMemory`` when /proc/meminfo shows clearly too little memory for ``model`` or the
    child is killed; nothing is written then. ``name`` names the model in those messages.
    """
    if not available():
        raise OnnxExportError(missing_message())
    _check_memory(name, model.count_params())
    graph_def, input_name, output_name = _frozen_graph(model, int(image_size))
    request = graph_def.SerializeToString()
    del graph_def  # Only the serialized copy stays in this process, and only until the child has it.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", __name__, input_name, output_name, os.path.abspath(path)]
    # The child's log goes to a file: a pipe nobody reads while the GraphDef is written would block it.
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        try:
            with contextlib.suppress(BrokenPipeError):  # Died before reading it all: its status says why.
                child.stdin.write(request)
            del request
            with contextlib.suppress(BrokenPipeError):
                child.stdin.close()
            _return_freed_memory()
            reply = child.stdout.read().decode("utf-8", "replace")
            child.wait()
        except BaseException:  # SIGTERM or Ctrl-C here (export.py raises them): the child goes too.
            child.kill()
            child.wait()
            raise
        finally:
            child.stdout.close()
        log.seek(0)
        return _result(child.returncode, reply, log.read().decode("utf-8", "replace"), name)


def _return_freed_memory():
    """glibc: hands the heap memory that the freezing freed back to the system, so that this process
    does not hold it while the child needs it (glibc keeps freed memory for reuse otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None).malloc_trim(0)


def _result(returncode, reply, log, name):
    """The child's peak memory from its reply, or the ``OnnxExportError`` its exit stands for."""
    if returncode == -signal.SIGKILL:  # The kernel's out-of-memory killer sends SIGKILL.
        raise _out_of_memory(name, "ran out of memory (killed)")
    lines = reply.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if returncode == 0 and "peak_rss" in result:
        return result["peak_rss"]
    if result.get("out_of_memory"):
        raise _out_of_memory(name, "ran out of memory")
    if "error" in result:
        raise OnnxExportError(result["error"])
    last = (log.strip().splitlines() or ["no output"])[-1][:300]
    raise OnnxExportError(f"ONNX conversion of {name} failed in its process (exit status {returncode}): {last}")


def write_as_configured(model, path, image_size, mode, name="the model"):
    """``write_onnx`` as ``config.export.onnx`` says: "" when written, else why it was skipped.

    "false" skips; "auto" skips with a warning when the converter is missing or the memory is too
    little; otherwise a failure (or, with "true", either of those) raises ``OnnxExportError``.
    """
    from absl import logging  # noqa: PLC0415

    if mode == "false":
        return "export.onnx=false"
    if mode == "auto" and not available():
        logging.warning("No model.onnx: %s.", missing_message())
        return missing_message()
    try:
        peak = write_onnx(model, path, image_size, name)
    except OnnxOutOfMemory as e:
        if mode != "auto":
            raise
        logging.warning("No model.onnx: %s.", e)
        return str(e)
    logging.info("Wrote %s (the conversion's peak memory: %.1f GiB).", path, peak / _GIB)
    return ""


# ------------------------------------------------------------------------------------------------
# The child: GraphDef on stdin -> model.onnx; one JSON line on stdout.


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _unmapped_ops(model_proto):
    """(op type, node name) of every node that is no ONNX operator: a TensorFlow op the converter kept."""
    import onnx  # noqa: PLC0415

    return [(node.op_type, node.name) for node in model_proto.graph.node
            if node.domain not in _RUNTIME_DOMAINS and not onnx.defs.has(node.op_type, node.domain)]


@contextlib.contextmanager
def _tf2onnx_without_copies():
    """tf2onnx 1.17 as its optimizers run, without the copies of the constants that made it need
    about twice M's size per pass (and L and XL more than 24 GiB); both undone on leaving.

    - Workaround: after every optimizer pass, ``Node.update_proto`` clears each node's attributes
      and copies them in again. With protobuf's upb backend (protobuf >= 4) a cleared field's memory
      stays in the message's arena until the message is freed (protocolbuffers/protobuf#10294), so
      every pass added a copy of every weight. Here each update starts a fresh NodeProto, and the old
      one's arena goes with it. ``tests/test_export_onnx.py`` has the canary for the growth.
    - Setting: ``TF2ONNX_CATCH_ERRORS=FALSE`` (what tf2onnx's large_model mode sets) stops it
      deep-copying the whole graph before each pass to roll a failing pass back; those copies live
      until Python's cycle collector runs. A pass that fails now fails the conversion.
    """
    from tf2onnx import constants, graph  # noqa: PLC0415

    update_proto = graph.Node.update_proto

    def update_fresh_proto(node, external_tensor_storage=None):
        node._op.ClearField("attribute")  # noqa: SLF001 tf2onnx keeps the proto there
        fresh = type(node._op)()  # noqa: SLF001
        fresh.CopyFrom(node._op)  # noqa: SLF001
        node._op = fresh  # noqa: SLF001
        update_proto(node, external_tensor_storage)

    catch = os.environ.get(constants.ENV_TF2ONNX_CATCH_ERRORS)
    graph.Node.update_proto = update_fresh_proto
    os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = "FALSE"
    try:
        yield
    finally:
        graph.Node.update_proto = update_proto
        if catch is None:
            os.environ.pop(constants.ENV_TF2ONNX_CATCH_ERRORS, None)
        else:
            os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = catch


def _convert(graph_def, input_name, output_name):
    """The frozen ``graph_def`` as an ONNX ModelProto, or ``OnnxExportError``.

    tf2onnx's ``from_graph_def`` is its two steps below (grappler, then the conversion) after an
    import and a freeze that a frozen graph does not need and that hold two more copies of it while
    grappler runs.
    """
    import tf2onnx  # noqa: PLC0415 an optional dependency
    from tf2onnx import tf_loader  # noqa: PLC0415

    try:
        with tf.Graph().as_default():
            graph_def = tf_loader.tf_optimize([input_name], [output_name], graph_def)
        with tf.device("/cpu:0"), _tf2onnx_without_copies():
            model_proto, _ = tf2onnx.convert._convert_common(  # noqa: SLF001 from_graph_def's own second step
                graph_def, name="efficientnetv2", continue_on_error=True, opset=OPSET,
                input_names=[input_name], output_names=[output_name],
                tensors_to_rename={input_name: INPUT, output_name: OUTPUT})
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 tf2onnx raises what its op handlers raise.
        raise OnnxExportError(f"ONNX converter (tf2onnx) failed: {_first_line(e)}") from e
    return model_proto


def _check(model_proto):
    import onnx  # noqa: PLC0415

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


def _volunteer_for_the_oom_killer():
    """Linux: be the first process the kernel kills when memory runs out (rather than the export, or
    another job on the machine), and die with the process that started this one."""
    with contextlib.suppress(OSError):
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write("1000")
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # noqa: PLC0415

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _child_main(input_name, output_name, path):
    _volunteer_for_the_oom_killer()
    try:
        # Parsed in the call, so that only _convert holds the GraphDef and can let it go.
        model_proto = _convert(tf.compat.v1.GraphDef.FromString(sys.stdin.buffer.read()), input_name, output_name)
        _check(model_proto)
        with open(path, "wb") as f:
            f.write(model_proto.SerializeToString())
    except OnnxExportError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    except MemoryError:
        print(json.dumps({"out_of_memory": True}), flush=True)
        return 1
    print(json.dumps({"peak_rss": _peak_rss()}), flush=True)
    return 0


def _peak_rss():
    """This process's peak resident memory in bytes: VmHWM (Linux), which starts afresh at exec;
    ``ru_maxrss`` keeps the peak of the process this one was forked from."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource  # noqa: PLC0415 POSIX

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:]))
