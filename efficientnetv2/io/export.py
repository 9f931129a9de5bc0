"""Export a trained run for serving, and predict on image files.

``export_run(config, model_dir, export_dir)`` restores the run's checkpoint with its EMA weights,
builds the inference model (fixed to the evaluation size, softmax probabilities) and writes a
SavedModel with three signatures (float32 and uint8 pixels, encoded image bytes), a ``.keras``
file, keras.applications weights, TFLite files, ONNX and ``export.json``; docs/export.md lists the
files and each signature's inputs and outputs.

Two decisions a reader must know: everything is written into a temporary folder beside
``export_dir`` and swapped into place only when complete (a kill leaves the previous export or the
new one, never half), and an export replaces only an earlier export of this project
(``check_export_dir``): anything else in ``export_dir`` is refused before anything is written.
"""

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import stat
import threading
import uuid

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2.io import checkpointing, keras_applications, onnx_export, tflite_int8
from efficientnetv2.io.checkpointing import restore_checkpoint, restore_with_fallback
from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.model import build_model_from_config
from efficientnetv2.variants import get_variant
from efficientnetv2.io.weights_import import find_checkpoint

__all__ = [
    "export_run",
    "ExportInterrupted",
    "check_export_dir",
    "export_model",
    "load_inference_model",
    "predict_files",
    "imagenet_class_names",
    "write_keras_application_weights",
    "keras_application_skip_reason",
    "eval_image_size",
    "InferenceInfo",
]

IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")
TOP_K = 5

FILES = {
    "saved_model": "saved_model",
    "keras": "model.keras",
    "keras_applications_weights": "keras_applications.weights.h5",
    "tflite_float32": "model_float32.tflite",
    "tflite_dynamic_range": "model_dynamic_range.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "labels": "labels.txt",
    "manifest": "export.json",
}
# ``export.json``'s "format": what marks a folder as an export of this project.
EXPORT_FORMAT = "efficientnetv2-export/1"


def imagenet_class_names():
    """The 1000 ImageNet-1k class names in label order (keras.applications' names)."""
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f]
    if len(names) != 1000:
        raise ValueError(f"{IMAGENET_CLASSES_FILE} has {len(names)} lines; expected 1000")
    return names


@dataclasses.dataclass
class InferenceInfo:
    """What the inference model is: variant, classes and their names, image size, source checkpoint."""

    variant: object  # VariantSpec
    num_classes: int
    class_names: object  # list of str, or None
    image_size: int
    checkpoint: str = ""
    ema: bool = False
    keras_application_skip: str = ""  # why there is no keras.applications file ("" when there is)

    def class_name(self, index):
        return self.class_names[index] if self.class_names else f"class_{index}"


# ------------------------------------------------------------------------------------------------
# Restoring a run.


def _restore(config, model_dir, checkpoint_path, restore_fn):
    """``restore_fn(prefix)`` on ``checkpoint_path`` when given (no fallback: the user asked for that
    one), else on the newest checkpoint it succeeds on, falling back past damaged ones as training
    does (``checkpointing.restore_with_fallback``)."""
    if checkpoint_path:
        return restore_checkpoint(find_checkpoint(checkpoint_path), restore_fn)
    folder = os.path.join(model_dir, "checkpoints")
    result = restore_with_fallback(folder, restore_fn)
    if result is None:
        raise FileNotFoundError(f"no checkpoint in {folder}: train first, or pass --checkpoint")
    return result


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0][:500] if lines else type(error).__name__


def _class_names(config, num_classes):
    """The data's class names when they can be read and fit, else ImageNet's for 1000 classes."""
    datasets = input_pipeline()  # The input side, only for the names.

    names = None
    try:
        names = list(datasets.get_source(config.data.dataset, config.data.data_dir).class_names or [])
    except (FileNotFoundError, ValueError, OSError, tf.errors.OpError) as e:
        logging.warning("Class names: cannot read the dataset (%s); exporting without its names.", e)
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    if names:
        logging.warning("The dataset has %d class names but the checkpoint %d classes; names not used.",
                        len(names), num_classes)
    return imagenet_class_names() if num_classes == 1000 else None


def _architecture_overrides(config):
    m = config.model
    overrides = [f"model.{k}" for k in ("width", "depth", "blocks") if getattr(m, k) is not None]
    if m.head_filters != 1280:
        overrides.append("model.head_filters")
    return overrides


def keras_application_skip_reason(config, spec):
    """Why the run has no keras.applications weights file, or "" when it has one."""
    if not spec.keras_application:
        return (f"EfficientNetV2-{spec.name.upper()} has no keras.applications counterpart "
                "(keras.applications has B0-B3, S, M and L)")
    overrides = _architecture_overrides(config)
    if overrides:
        return (f"the architecture differs from keras.applications' {spec.keras_application} "
                f"({', '.join(overrides)} set in the config)")
    return ""


def eval_image_size(config):
    return config.eval.image_size or get_variant(config.model.variant).eval_size


def load_inference_model(config, model_dir, checkpoint_path=None):
    """(model, InferenceInfo): the run's checkpoint with EMA weights in a float32 inference model.

    The model maps float32 images [batch, S, S, 3] in [0, 255] to softmax probabilities; its head
    dropout rate is 0 and, called without ``training=True``, batch norm uses its moving statistics.
    The model is built from the run's model config (``build_model_from_config``) with the
    checkpoint's class count and restored through the one checkpoint reader
    (``checkpointing.restore_model``, as training restores it), EMA weights swapped in: every model
    weight must be in the checkpoint with its shape. Without ``checkpoint_path``, a checkpoint that
    cannot be restored (damaged, or of another architecture) is skipped with a warning for the one
    before, as training does (``CheckpointError`` naming each when none can be); a
    ``checkpoint_path`` that cannot be restored is a ``CheckpointError`` naming it and why.
    """
    spec = get_variant(config.model.variant)
    image_size = eval_image_size(config)

    def restore(prefix):
        head = checkpointing.saved_shapes(prefix).get("predictions/bias")
        if head is None:
            raise ValueError(f"checkpoint {prefix} has no classifier ('predictions' layer); cannot export it")
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")  # Export in float32 whatever the run trained in.
        try:
            logits_model = build_model_from_config(config.model, head[0], image_size, dropout_rate=0.0)
            probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits_model.output)
            model = keras.Model(logits_model.input, probabilities, name=logits_model.name)
        finally:
            keras.config.set_dtype_policy(previous)
        try:
            ema = checkpointing.restore_model(prefix, logits_model, use_ema=True)
        except ValueError as e:
            overrides = "".join(f", {override}" for override in _architecture_overrides(config))
            raise ValueError(f"another run's? The config says EfficientNetV2-{spec.name.upper()}"
                             f"{overrides}, and {_first_line(e)}") from None
        return model, prefix, head[0], ema

    model, prefix, num_classes, ema = _restore(config, model_dir, checkpoint_path, restore)
    info = InferenceInfo(
        variant=spec,
        num_classes=num_classes,
        class_names=_class_names(config, num_classes),
        image_size=image_size,
        checkpoint=prefix,
        ema=ema,
        keras_application_skip=keras_application_skip_reason(config, spec),
    )
    logging.info("Restored %s (%s weights) into EfficientNetV2-%s, %d classes, %d px.", prefix,
                 "EMA" if info.ema else "training", spec.name.upper(), num_classes, info.image_size)
    return model, info


# ------------------------------------------------------------------------------------------------
# Serving functions.


def _check_images(images):
    """``images`` as float32 [batch, height, width, 3], or a runtime error saying what is expected.

    The check feeds the rest through ``tf.cond``: with a plain control dependency, TF's shape
    inference of the later ops (specialized to the actual input shape) fails first, with a message
    about an internal op instead of this one.
    """
    shape = tf.shape(images)
    padded = tf.concat([tf.zeros([4], tf.int32), shape], 0)  # So that a scalar has a "last dim".
    ok = tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(padded[-1], 3))

    def valid():
        return tf.reshape(images, [-1, padded[-3], padded[-2], 3])

    def invalid():
        message = "images must be a batch [batch, height, width, 3] of RGB pixels in [0, 255]; got shape"
        with tf.control_dependencies([tf.debugging.Assert(False, [message, shape], summarize=8)]):
            return tf.zeros([0, 1, 1, 3], images.dtype)

    images = tf.cond(ok, valid, invalid)
    return tf.cast(tf.ensure_shape(images, [None, None, None, 3]), tf.float32)


def _decode_batch(image_bytes, size):
    """Encoded images [batch] -> float32 [batch, size, size, 3] center crops, or an
    InvalidArgumentError naming the first image that cannot be decoded: "image_bytes[<i>] cannot be
    decoded ...".

    A decoding op fails the whole call without saying which image it was given, and a graph cannot
    catch an op's error; tf.data can: the images are decoded in a dataset that drops the failures,
    and the indices that come out tell which did not.
    """
    decode = input_pipeline().decode

    indices = tf.range(tf.shape(image_bytes)[0])
    decoded = tf.data.Dataset.from_tensor_slices((indices, image_bytes)).map(
        lambda i, b: (i, decode.center_crop(b, size))).ignore_errors()
    # One batch of all that decoded, or none when nothing did (then the empty initial state stays).
    batch = decoded.batch(tf.cast(tf.maximum(tf.size(indices), 1), tf.int64))
    empty = (tf.zeros([0], tf.int32), tf.zeros([0, size, size, 3], tf.float32))
    kept, images = batch.reduce(empty, lambda _, x: x)
    failed = tf.where(tf.logical_not(tf.reduce_any(tf.equal(indices[:, None], kept[None, :]), axis=1)))
    first = tf.strings.as_string(tf.concat([tf.cast(failed[:, 0], tf.int32), [-1]], 0)[0])
    message = tf.strings.join([
        "image_bytes[", first, "] cannot be decoded (corrupt, truncated, too large or not a "
        "JPEG/PNG/GIF/BMP/WebP image); ", tf.strings.as_string(tf.size(failed)), " of ",
        tf.strings.as_string(tf.size(indices)), " images in the batch cannot"])
    check = tf.debugging.Assert(tf.equal(tf.size(failed), 0), [message])
    with tf.control_dependencies([check]):
        return tf.identity(images)


class _Serving(tf.Module):
    """The SavedModel's root: the serving functions and the variables they read.

    The Keras model is captured by the functions, not tracked as an attribute; the module tracks the
    tf.Variables the functions use (as ``keras.export.ExportArchive`` does), which is what lets
    TF1-style loaders such as ``saved_model_cli run`` restore them.
    """

    def __init__(self, model, image_size, class_names):
        super().__init__(name="efficientnetv2_serving")
        size = int(image_size)
        k = min(TOP_K, int(model.output.shape[-1]))
        names = tf.constant(class_names, tf.string) if class_names else None

        # Traced once; the three signatures only prepare images and call it.
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def outputs(images):
            # An empty batch gives empty results: the model runs on one blank image instead (Keras'
            # batch norm refuses a batch of 0), and every output keeps the first 0 rows.
            count = tf.shape(images)[0]
            images = tf.cond(tf.equal(count, 0), lambda: tf.zeros([1, size, size, 3]), lambda: images)
            probabilities = model(images, training=False)
            top = tf.math.top_k(probabilities, k=k)
            result = {
                "probabilities": probabilities,
                "top5_ids": tf.cast(top.indices, tf.int32),
                "top5_probabilities": top.values,
            }
            if names is not None:
                result["top5_names"] = tf.gather(names, top.indices)
            return {key: value[:count] for key, value in result.items()}

        def serve(images):
            images = _check_images(images)
            same = tf.logical_and(tf.equal(tf.shape(images)[1], size), tf.equal(tf.shape(images)[2], size))
            images = tf.cond(
                same,
                lambda: images,
                lambda: tf.image.resize(images, [size, size], method=tf.image.ResizeMethod.BILINEAR),
            )
            return outputs(tf.ensure_shape(images, [None, size, size, 3]))

        def serve_bytes(image_bytes):
            return outputs(_decode_batch(image_bytes, size))

        self.serve = tf.function(serve)
        self.serve_bytes = tf.function(
            serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.concrete = {
            "serving_default": self.serve.get_concrete_function(tf.TensorSpec(None, tf.float32, name="images")),
            "serving_uint8": self.serve.get_concrete_function(tf.TensorSpec(None, tf.uint8, name="images")),
            "serving_bytes": self.serve_bytes.get_concrete_function(),
        }
        seen, variables = set(), []
        for function in self.concrete.values():
            for v in function.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
        self.model_variables = variables


def _write_saved_model(model, path, image_size, class_names):
    module = _Serving(model, image_size, class_names)
    tf.saved_model.save(module, path, signatures=module.concrete)


def _tflite_function(model, image_size):
    """(concrete function, module tracking its variables) of ``model`` on [1, S, S, 3] float32."""

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="images")])
    def infer(images):
        return {"probabilities": model(images, training=False)}

    function = infer.get_concrete_function()
    module = tf.Module()
    module.model_variables = list(function.variables)  # The tf.Variables to freeze (see _Serving).
    return function, module


def _write_tflite(function, module, quantize):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # No data: dynamic-range quantization.
    return converter.convert()


def write_keras_application_weights(model, path, variant):
    """Writes ``model``'s weights as a keras.applications ``.weights.h5`` file of ``variant``.

    ``keras.applications.EfficientNetV2<X>(weights=path, classes=<classes>)`` loads it directly.
    """
    app = keras_applications.build_keras_application(variant, num_classes=int(model.output.shape[-1]))
    keras_applications.copy_weights_to(model, app)
    app.save_weights(path)


# ------------------------------------------------------------------------------------------------
# Atomic folder replacement.

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Atomically swaps two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _replace_folder(new, target):
    """Moves the complete folder ``new`` to ``target``, replacing a previous export there."""
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    _check_replaceable(target)  # Again: the folder may have changed while the export was written.
    if _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the previous export.
        return
    old = f"{new}.old"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


# ------------------------------------------------------------------------------------------------
# What an export may replace, and where it may go.

# The run folder's own entries, where an export must not go (``model_dir/export`` is the default).
RUN_ENTRIES = ("checkpoints", "logs", "best", "config.yaml")


def _is_our_manifest(path):
    """Whether ``path`` is an ``export.json`` this project wrote: one with ``format`` EXPORT_FORMAT,
    or one of the earlier version (before ``format``), which had ``variant``, ``num_classes`` and
    ``files``."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    return manifest.get("format") == EXPORT_FORMAT or (
        "format" not in manifest and {"variant", "num_classes", "files"} <= set(manifest))


def _check_replaceable(export_dir):
    """Raises ``ValueError`` unless ``export_dir`` is absent, an empty folder, or a previous export:
    a folder holding our ``export.json`` and nothing but the files an export writes (so that replacing
    it deletes nothing a person wrote)."""
    if not os.path.lexists(export_dir):
        return
    if os.path.islink(export_dir):
        raise ValueError(f"export_dir {export_dir} is a symbolic link; refusing to replace it "
                         "(pass the folder it points to, or another path)")
    if not os.path.isdir(export_dir):
        raise ValueError(f"export_dir {export_dir} exists and is not a folder; refusing to replace it")
    entries = os.listdir(export_dir)
    if not entries:
        return
    if not _is_our_manifest(os.path.join(export_dir, FILES["manifest"])):
        raise ValueError(f"export_dir {export_dir} is not empty and is not an export of this project "
                         f"(no {FILES['manifest']} written by it); refusing to replace it: pass an "
                         "empty or new folder")
    foreign = sorted(set(entries) - set(FILES.values()))
    if foreign:
        raise ValueError(f"export_dir {export_dir} is an earlier export but also holds "
                         f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, which an "
                         "export does not write; refusing to replace it: move them away first")


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_export_dir(export_dir, model_dir):
    """Raises ``ValueError`` when exporting to ``export_dir`` could delete anything but a previous export.

    Refused: the run folder ``model_dir`` itself, a folder above it, a path inside its own entries
    (``RUN_ENTRIES``: checkpoints, logs, best model, config), and an existing ``export_dir`` that is
    not an empty folder or a previous export of this project (see ``_check_replaceable``). Paths are
    compared after resolving symbolic links and ``.``; ``model_dir/export`` (the default) is fine.
    """
    target = os.path.realpath(export_dir)
    run = os.path.realpath(model_dir)
    if _inside(run, target):
        what = "the run folder" if target == run else "a folder containing the run folder"
        raise ValueError(f"export_dir {export_dir} is {what} model_dir {model_dir}; replacing it would "
                         "delete the run: pass another folder (default: model_dir/export)")
    for entry in RUN_ENTRIES:
        if _inside(target, os.path.join(run, entry)):
            raise ValueError(f"export_dir {export_dir} is inside the run's own {entry} "
                             f"({os.path.join(model_dir, entry)}); pass another folder "
                             "(default: model_dir/export)")
    _check_replaceable(export_dir)


def _temp_prefix(export_dir):
    parent, name = os.path.split(os.path.abspath(export_dir))
    return os.path.join(parent, f".{name}.export-tmp-")


def _remove_stale_temps(export_dir):
    """Removes the temporary folders of exports that were killed (their process is gone).

    Only folders named as ``export_model`` names them (``.<name>.export-tmp-<pid>-<8 hex>``, or that
    with ``.old``) that hold nothing but files an export writes; anything else is left alone.
    """
    prefix = _temp_prefix(export_dir)
    parent = os.path.dirname(prefix)
    if not os.path.isdir(parent):
        return
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"(\d+)-[0-9a-f]{8}(\.old)?")
    for entry in os.listdir(parent):
        match = pattern.fullmatch(entry)
        path = os.path.join(parent, entry)
        if not match or os.path.islink(path) or not os.path.isdir(path):
            continue
        if set(os.listdir(path)) - set(FILES.values()):
            continue  # Not only what an export writes: not ours to delete.
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            logging.info("Removing %s, left by an interrupted export.", path)
            shutil.rmtree(path, ignore_errors=True)
        except (OverflowError, PermissionError):
            continue


class ExportInterrupted(RuntimeError):
    """SIGTERM or SIGINT arrived during an export: its temporary folder was removed, the target is as
    it was. ``exit_code`` is the shell's for that signal (128 + its number)."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


class _Signal(BaseException):
    """Raised by ``_SignalsStop``'s handler; ``export_model`` turns it into ``ExportInterrupted``."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _SignalsStop:
    """SIGTERM and SIGINT raise ``_Signal`` in the main thread while an export is written, so its
    cleanup runs (SIGTERM's default ends the process without it); inside ``committing()`` (the
    folder moving into place) they wait, so the target is never left half replaced."""

    def __init__(self):
        self._previous, self._committing, self.pending = {}, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum, frame):
        if self._committing:
            self.pending = signum
            return
        raise _Signal(signum)

    def committing(self):
        self._committing = True


# ------------------------------------------------------------------------------------------------


def export_model(model, export_dir, info, onnx="auto", calibration=None):
    """Writes every export format of the inference ``model`` (see the module docstring) into
    ``export_dir``, atomically. Returns ``{kind: path}`` of what was written.

    ``onnx`` is ``config.export.onnx``; ``calibration``, float32 images [n, S, S, 3], calibrates
    ``model_int8.tflite`` (None: no such file). When ONNX fails, the other formats are exported and
    then its ``OnnxExportError`` is raised."""
    export_dir = os.path.abspath(export_dir)
    _check_replaceable(export_dir)
    os.makedirs(os.path.dirname(export_dir), exist_ok=True)
    _remove_stale_temps(export_dir)
    tmp = f"{_temp_prefix(export_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    written, skipped = [], {}
    with _SignalsStop() as signals:
        try:
            os.makedirs(tmp)
            onnx_error = _write_export(model, tmp, info, written, skipped, onnx, calibration)
            signals.committing()
            _replace_folder(tmp, export_dir)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, _Signal):
                name = signal.Signals(e.signum).name
                raise ExportInterrupted(
                    f"export to {export_dir} stopped by {name}; removed its temporary folder {tmp}; "
                    f"{export_dir} is as it was", e.signum) from None
            raise
    if signals.pending is not None:
        logging.warning("%s arrived while the export was moved into place; it completed first.",
                        signal.Signals(signals.pending).name)
    if onnx_error is not None:
        raise onnx_error
    return {kind: os.path.join(export_dir, FILES[kind]) for kind in written}


def _write_export(model, tmp, info, written, skipped, onnx, calibration):
    """Writes every format into the folder ``tmp``, appending each kind to ``written``; returns the
    ``OnnxExportError`` to raise once the others are in place, or None."""
    def path(kind):
        return os.path.join(tmp, FILES[kind])

    # ONNX first, while this process holds the least memory: its conversion's child needs the most,
    # and the other formats' conversions leave memory behind in this process.
    onnx_error = None
    try:
        skipped["onnx"] = onnx_export.write_as_configured(
            model, path("onnx"), info.image_size, onnx, f"EfficientNetV2-{info.variant.name.upper()}")
    except onnx_export.OnnxExportError as e:
        onnx_error, skipped["onnx"] = e, str(e)
    if not skipped["onnx"]:
        del skipped["onnx"]
        written.append("onnx")

    _write_saved_model(model, path("saved_model"), info.image_size, info.class_names)
    written.append("saved_model")
    model.save(path("keras"))
    written.append("keras")
    if info.keras_application_skip:
        skipped["keras_applications_weights"] = info.keras_application_skip
        logging.warning("No keras.applications weights file: %s.", info.keras_application_skip)
    else:
        write_keras_application_weights(model, path("keras_applications_weights"), info.variant)
        written.append("keras_applications_weights")
    function, module = _tflite_function(model, info.image_size)
    for kind, quantize in (("tflite_float32", False), ("tflite_dynamic_range", True)):
        with open(path(kind), "wb") as f:
            f.write(_write_tflite(function, module, quantize))
        written.append(kind)
    if calibration is not None:
        with open(path("tflite_int8"), "wb") as f:
            f.write(tflite_int8.convert(function, module, calibration))
        written.append("tflite_int8")
    if info.class_names:
        with open(path("labels"), "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in info.class_names))
        written.append("labels")
    manifest = {
        "format": EXPORT_FORMAT,
        "variant": info.variant.name,
        "num_classes": info.num_classes,
        "image_size": info.image_size,
        "checkpoint": info.checkpoint,
        "ema_weights": info.ema,
        "inputs": "float32 or uint8 RGB pixels in [0, 255], [batch, height, width, 3]; resized to "
                  "image_size inside the SavedModel (TFLite: exactly [1, image_size, image_size, 3] "
                  "float32; model_int8.tflite: uint8, quantized as its input details say; ONNX: "
                  "[batch, image_size, image_size, 3] float32)",
        "outputs": "softmax probabilities [batch, num_classes]",
        "files": {kind: FILES[kind] for kind in written},
        "skipped": skipped,
    }
    with open(path("manifest"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    written.append("manifest")
    return onnx_error


def export_run(config, model_dir, export_dir, checkpoint_path=None):
    """Exports the run in ``model_dir`` (latest checkpoint, or ``checkpoint_path``) to ``export_dir``.

    Returns ``{kind: path}``: ``saved_model``, ``keras``, ``keras_applications_weights`` (when the
    variant has one), ``tflite_float32``, ``tflite_dynamic_range``, ``labels`` (when names exist) and
    ``manifest``.
    """
    check_export_dir(export_dir, model_dir)
    model, info = load_inference_model(config, model_dir, checkpoint_path)
    calibration = None
    if config.export.tflite_int8:
        calibration = tflite_int8.calibration_images(config, info.image_size, config.export.calibration_images)
    written = export_model(model, export_dir, info, config.export.onnx, calibration)
    logging.info("Exported EfficientNetV2-%s (%s, %d px) to %s.", info.variant.name.upper(),
                 info.checkpoint, info.image_size, export_dir)
    return written


# ------------------------------------------------------------------------------------------------
# Prediction on files.


def _read_image_file(path, max_bytes):
    """The bytes of the image file ``path``; ``ValueError`` / ``FileNotFoundError`` naming it when it
    is not a regular file or is larger than ``max_bytes``.

    Checked before reading (a device such as /dev/zero never ends, a pipe blocks), and again on the
    open file, opened without blocking, in case ``path`` changed in between.
    """
    if "://" in path:  # GCS and other TF file systems: no devices or pipes there.
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"image {path} not found")
        if tf.io.gfile.isdir(path):
            raise ValueError(f"image {path} is a folder, not an image file")
        _check_image_size(path, tf.io.gfile.stat(path).length, max_bytes)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read(max_bytes + 1)
    try:
        _check_image_stat(path, os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            _check_image_stat(path, os.fstat(f.fileno()), max_bytes)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} not found") from None
    except OSError as e:
        raise ValueError(f"image {path} cannot be read ({e.strerror or e})") from None
    _check_image_size(path, len(data), max_bytes)  # A file that grew since.
    return data


def _check_image_stat(path, st, max_bytes):
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"image {path} is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"image {path} is not a regular file (a device, pipe or socket); not read")
    _check_image_size(path, st.st_size, max_bytes)


def _check_image_size(path, size, max_bytes):
    if size > max_bytes:
        raise ValueError(f"image {path} is {size / 2**20:.1f} MiB, more than eval.max_image_mb = "
                         f"{max_bytes // 2**20}; not read")


def _load_image(path, image_size, max_bytes):
    decode = input_pipeline().decode

    data = _read_image_file(path, max_bytes)
    try:
        return decode.center_crop(tf.constant(data), image_size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        message = e.message or str(e)
        # decode's header check says what the header declares and why that is refused.
        declared = re.search(r"header declares [^'\]\n]*", message)
        if declared:
            raise ValueError(f"image {path} not decoded: {declared.group(0)}") from None
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", message).strip().splitlines()[0][:200]
        raise ValueError(f"cannot decode image {path}: {reason} (corrupt, truncated or not an image?)") from None


def predict_files(config, model_dir, images, checkpoint_path=None):
    """Yields ``(image, top5, error)`` for each image file, in order: exactly one of ``top5``
    (``[(class name, probability)]``, best first, up to 5) and ``error`` (a one-line ``str`` naming
    the file and what is wrong with it) is ``None``.

    Only regular files of at most ``config.eval.max_image_mb`` MiB are read (a folder, device, pipe
    or larger file is an error, never opened or read whole). Images are decoded and center-cropped
    like the evaluation data, at the evaluation size, all before the model is restored (once, and
    not at all when no image is usable). Names are the dataset's class names, ImageNet's for a
    1000-class model, else ``class_<i>``. A checkpoint that cannot be restored raises, as in
    ``load_inference_model``.
    """
    images = list(images)
    size = eval_image_size(config)
    max_bytes = config.eval.max_image_mb * 2**20
    pixels, errors = [], []
    for path in images:
        try:
            pixels.append(_load_image(path, size, max_bytes))
            errors.append(None)
        except (ValueError, FileNotFoundError) as e:
            pixels.append(None)
            errors.append(str(e))
    model = info = None
    if any(error is None for error in errors):
        model, info = load_inference_model(config, model_dir, checkpoint_path)
    for path, x, error in zip(images, pixels, errors):
        if error is not None:
            yield path, None, error
            continue
        probabilities = np.asarray(model(x[None], training=False))[0]
        top = np.argsort(-probabilities, kind="stable")[:min(TOP_K, info.num_classes)]
        yield path, [(info.class_name(int(i)), float(probabilities[i])) for i in top], None
