"""Export a trained run for serving, and predict on image files.

``export_run(config, model_dir, export_dir)`` restores the run's latest checkpoint (or
``checkpoint_path``) with its EMA weights, builds the inference model (batch norm in inference mode,
no dropout, softmax probabilities, fixed to the evaluation image size) and writes::

    export_dir/
      saved_model/                      TF SavedModel with the signatures below
      model.keras                       Keras-native; keras.models.load_model(path) after `import efficientnetv2`
      keras_applications.weights.h5     for keras.applications.EfficientNetV2<X>(weights=path, classes=N)
      model_float32.tflite              TFLite, float32, input [1, S, S, 3] float32 pixels in [0, 255]
      model_dynamic_range.tflite        TFLite with dynamic-range (int8 weight) quantization
      labels.txt                        class names, one per line (when the data has names)
      export.json                       what was written, from which checkpoint, and what was skipped

The keras.applications file is written for B0-B3, S, M and L with their standard architecture; XL
(keras.applications has none) and models with overridden blocks/width/depth/head are skipped, and
``export.json`` and the log say why.

SavedModel signatures (every one returns ``probabilities`` [batch, classes] float32, ``top5_ids``
[batch, k] int32, ``top5_probabilities`` [batch, k] float32 and, when class names exist,
``top5_names`` [batch, k] string; k = min(5, classes)):

- ``serving_default``: ``images`` float32 [batch, height, width, 3], pixels in [0, 255] (RGB).
- ``serving_uint8``: the same with ``images`` uint8. (A signature has one dtype, so uint8 is a second
  concrete function of the same ``serve`` function; from Python, ``loaded.serve(images)`` takes
  either dtype.)
- ``serving_bytes``: ``image_bytes`` string [batch] of encoded JPEG/PNG/GIF/BMP, decoded and
  center-cropped like the evaluation pipeline (``datasets.decode.center_crop``).

Images of any height and width are resized (bilinear) to the evaluation size S inside; images
already S x S pass unchanged. ``images`` is declared with unknown shape so that the rank and channel
count are checked when the function runs, with an error saying what is expected (a signature does not
check shapes itself: a rank-3 batch would otherwise crash the convolution kernels).

Everything is written into a temporary folder beside ``export_dir`` and moved into place only when
complete; an existing export is swapped out atomically (``renameat2(RENAME_EXCHANGE)`` on Linux,
otherwise two renames) and deleted after. A kill during export leaves the previous export or the new
one, never a half-written folder.
"""

import ctypes
import dataclasses
import json
import os
import re
import shutil
import uuid

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2 import keras_applications, training, weights_import
from efficientnetv2.variants import get_variant

__all__ = [
    "export_run",
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
    "labels": "labels.txt",
    "manifest": "export.json",
}


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


def _checkpoint_prefix(model_dir, checkpoint_path):
    if checkpoint_path:
        return weights_import.find_checkpoint(checkpoint_path)
    folder = os.path.join(model_dir, "checkpoints")
    latest = tf.train.latest_checkpoint(folder) if tf.io.gfile.isdir(folder) else None
    if not latest:
        raise FileNotFoundError(f"no checkpoint in {folder}: train first, or pass --checkpoint")
    return latest


def _class_names(config, num_classes):
    """The data's class names when they can be read and fit, else ImageNet's for 1000 classes."""
    import datasets  # noqa: PLC0415 (the input side, only for the names)

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
    The weights are read by variable name (``weights_import.read_run_checkpoint``): every model
    weight must be in the checkpoint with its shape, else ``ValueError``.
    """
    prefix = _checkpoint_prefix(model_dir, checkpoint_path)
    weights = weights_import.read_run_checkpoint(prefix)
    spec = get_variant(config.model.variant)
    num_classes = weights.num_classes
    if num_classes is None:
        raise ValueError(f"checkpoint {prefix} has no classifier ('predictions' layer); cannot export it")
    info = InferenceInfo(
        variant=spec,
        num_classes=num_classes,
        class_names=_class_names(config, num_classes),
        image_size=eval_image_size(config),
        checkpoint=prefix,
        keras_application_skip=keras_application_skip_reason(config, spec),
    )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # Export in float32 whatever the run trained in.
    try:
        # training._build reads only plan.variant and plan.num_classes.
        logits_model = training._build(config, info, 0.0, info.image_size)
        probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits_model.output)
        model = keras.Model(logits_model.input, probabilities, name=logits_model.name)
    finally:
        keras.config.set_dtype_policy(previous)
    try:
        report = weights_import.assign_run_checkpoint(model, weights, use_ema=True, allow_head_skip=False)
    except ValueError as e:
        raise ValueError(f"{e} (the config says EfficientNetV2-{spec.name.upper()}"
                         f"{', ' + ', '.join(_architecture_overrides(config)) if _architecture_overrides(config) else ''}"
                         f"; is this checkpoint from another run?)") from None
    info.ema = report["ema"]
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
            probabilities = model(images, training=False)
            top = tf.math.top_k(probabilities, k=k)
            result = {
                "probabilities": probabilities,
                "top5_ids": tf.cast(top.indices, tf.int32),
                "top5_probabilities": top.values,
            }
            if names is not None:
                result["top5_names"] = tf.gather(names, top.indices)
            return result

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
            from datasets import decode  # noqa: PLC0415

            images = tf.map_fn(
                lambda b: decode.center_crop(b, size),
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )
            return outputs(images)

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
    """Moves the complete folder ``new`` to ``target``, replacing what is there."""
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise ValueError(f"export_dir {target} exists and is not a folder; refusing to replace it")
    if _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the previous export.
        return
    old = f"{new}.old"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def _temp_prefix(export_dir):
    parent, name = os.path.split(os.path.abspath(export_dir))
    return os.path.join(parent, f".{name}.export-tmp-")


def _remove_stale_temps(export_dir):
    """Removes the temporary folders of exports that were killed (their process is gone)."""
    prefix = _temp_prefix(export_dir)
    parent = os.path.dirname(prefix)
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if not path.startswith(prefix):
            continue
        try:
            pid = int(path[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            logging.info("Removing %s, left by an interrupted export.", path)
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


# ------------------------------------------------------------------------------------------------


def export_model(model, export_dir, info):
    """Writes every export format of the inference ``model`` (see the module docstring) into
    ``export_dir``, atomically. Returns ``{kind: path}`` of what was written."""
    export_dir = os.path.abspath(export_dir)
    os.makedirs(os.path.dirname(export_dir), exist_ok=True)
    _remove_stale_temps(export_dir)
    tmp = f"{_temp_prefix(export_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    written, skipped = [], {}
    try:
        def path(kind):
            return os.path.join(tmp, FILES[kind])

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
        if info.class_names:
            with open(path("labels"), "w", encoding="utf-8") as f:
                f.write("".join(f"{name}\n" for name in info.class_names))
            written.append("labels")
        manifest = {
            "variant": info.variant.name,
            "num_classes": info.num_classes,
            "image_size": info.image_size,
            "checkpoint": info.checkpoint,
            "ema_weights": info.ema,
            "inputs": "float32 or uint8 RGB pixels in [0, 255], [batch, height, width, 3]; resized to "
                      "image_size inside the SavedModel (TFLite: exactly [1, image_size, image_size, 3] "
                      "float32)",
            "outputs": "softmax probabilities [batch, num_classes]",
            "files": {kind: FILES[kind] for kind in written},
            "skipped": skipped,
        }
        with open(path("manifest"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        written.append("manifest")
        _replace_folder(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {kind: os.path.join(export_dir, FILES[kind]) for kind in written}


def export_run(config, model_dir, export_dir, checkpoint_path=None):
    """Exports the run in ``model_dir`` (latest checkpoint, or ``checkpoint_path``) to ``export_dir``.

    Returns ``{kind: path}``: ``saved_model``, ``keras``, ``keras_applications_weights`` (when the
    variant has one), ``tflite_float32``, ``tflite_dynamic_range``, ``labels`` (when names exist) and
    ``manifest``.
    """
    model, info = load_inference_model(config, model_dir, checkpoint_path)
    written = export_model(model, export_dir, info)
    logging.info("Exported EfficientNetV2-%s (%s, %d px) to %s.", info.variant.name.upper(),
                 info.checkpoint, info.image_size, export_dir)
    return written


# ------------------------------------------------------------------------------------------------
# Prediction on files.


def _load_image(path, image_size):
    from datasets import decode  # noqa: PLC0415

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"image {path} not found")
    data = tf.io.read_file(path)
    try:
        return decode.center_crop(data, image_size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message or str(e)).strip().splitlines()[0][:200]
        raise ValueError(f"cannot decode image {path}: {reason} (corrupt, truncated or not an image?)") from None


def predict_files(config, model_dir, images, checkpoint_path=None):
    """Yields ``(image, [(class name, probability)] * 5)`` for each image file, best first.

    Images are decoded and center-cropped like the evaluation data, at the evaluation size, before
    the model is restored: a missing file raises ``FileNotFoundError`` and an undecodable one
    ``ValueError``, each naming the file. Names are the dataset's class names, ImageNet's for a
    1000-class model, else ``class_<i>``.
    """
    images = list(images)
    size = eval_image_size(config)
    pixels = [_load_image(path, size) for path in images]
    model, info = load_inference_model(config, model_dir, checkpoint_path)
    k = min(TOP_K, info.num_classes)
    for path, x in zip(images, pixels):
        probabilities = np.asarray(model(x[None], training=False))[0]
        top = np.argsort(-probabilities, kind="stable")[:k]
        yield path, [(info.class_name(int(i)), float(probabilities[i])) for i in top]
