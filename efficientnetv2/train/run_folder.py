"""The run folder (``model_dir``): checks before any work, and its ``config.yaml``.

A run resumes only with the config it was started with (``check_config``), unless allowed, and
never with another architecture: a checkpoint fits no model of other shapes.
"""

import os

from absl import logging
import tensorflow as tf

from efficientnetv2.io import checkpointing
from efficientnetv2.variants import get_variant
from hparams import config as config_lib

__all__ = ["check_config", "check_apart_from_data", "check_model_dir", "write_config", "write_atomically"]


# The keys that decide the weights' shapes: a checkpoint fits no model built with other values.
_ARCHITECTURE_KEYS = ("model.variant", "model.width", "model.depth", "model.blocks", "model.head_filters")


def check_config(config, model_dir, allow_config_change):
    """Refuses to resume a run with another config (unless allowed). A ``config.yaml`` without any
    checkpoint is left by an attempt that failed before it trained: this command starts the run anew."""
    path = os.path.join(model_dir, "config.yaml")
    if not tf.io.gfile.exists(path):
        return
    if not checkpointing.checkpoint_candidates(os.path.join(model_dir, "checkpoints")):
        logging.info("%s is from an attempt that saved no checkpoint; this command's config replaces it.", path)
        return
    with tf.io.gfile.GFile(path, "rb") as f:
        previous = config_lib.from_yaml(f.read(), source=path)
    changed = config_lib.diff(previous, config)
    architecture = {k: v for k, v in changed.items() if k in _ARCHITECTURE_KEYS
                    and not (k == "model.variant" and _variant_name(v[0]) == _variant_name(v[1]))}
    if architecture and allow_config_change:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in architecture.items())
        raise config_lib.ConfigError(
            f"{model_dir} holds checkpoints of EfficientNetV2-{_variant_name(previous.model.variant).upper()} "
            "and this command "
            f"asks for another architecture ({lines}); --allow_config_change cannot change the weights' shapes. "
            f"Resume with --model={previous.model.variant}, or train in another --model_dir (fine-tune from "
            f"this run with train.init_checkpoint={model_dir})"
        )
    if changed and not allow_config_change:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise config_lib.ConfigError(
            f"{model_dir} holds a run with another config ({lines}); resume with the same "
            "config, use another --model_dir, or pass --allow_config_change"
        )
    if changed:
        logging.warning("Config changed on resume (allowed): %s", changed)


def _variant_name(name):
    """``name`` as the variants table spells it ("efficientnetv2-s" -> "s"); unknown names as given."""
    try:
        return get_variant(name).name
    except ValueError:
        return str(name)


def write_atomically(path, text):
    """Writes ``text`` to ``path`` through a temporary file renamed over it: a kill leaves the old file."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def write_config(config, model_dir):
    """Writes ``model_dir/config.yaml`` atomically."""
    return write_atomically(os.path.join(model_dir, "config.yaml"), config_lib.dump(config))


def check_apart_from_data(model_dir, data_dir):
    """Refuses a ``model_dir`` that is the data folder, inside it or holds it (real paths, links
    resolved): checkpoints among the photos would be read as a class folder by every later run."""
    if not data_dir or "://" in model_dir or "://" in data_dir:
        return
    run, data = os.path.realpath(model_dir), os.path.realpath(data_dir)
    if os.path.commonpath([run, data]) in (run, data):
        where = "is" if run == data else "is inside" if run.startswith(data + os.sep) else "holds"
        raise config_lib.ConfigError(
            f"--model_dir {model_dir} {where} the data folder --data_dir {data_dir}; pass a run folder "
            "outside the data (the run's files would be read as data)")


def check_model_dir(model_dir):
    """Creates ``model_dir`` and proves it writable, or raises an OSError saying what is wrong with it."""
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise NotADirectoryError(f"--model_dir {model_dir} is a file, not a folder; pass a folder for the run")
    if "://" in model_dir:
        tf.io.gfile.makedirs(model_dir)
        return
    probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("probe\n")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--model_dir {model_dir} cannot be written ({e.strerror or e}); "
                              "pass a folder this user can write") from None
