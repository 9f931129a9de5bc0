"""Pretrained weights into a built model: our runs, keras.applications files, the reference release.

``load_pretrained(model, path, variant)`` finds which format ``path`` holds (``variant`` must agree
with the model's name when that names a variant):

1. Our own checkpoints: a run folder, a checkpoints folder or a checkpoint prefix, read by
   ``checkpointing.read_weights`` (the one reader of our checkpoints) by Keras path, EMA weights
   when present. By name, because a fine-tuned classifier may differ.
2. keras.applications EfficientNetV2 files (``.h5`` or ``.weights.h5``): loaded into the
   keras.applications model of ``variant``, then copied by ``keras_applications.layer_map``.
3. The reference release's TF checkpoints (prefix, folder or released ``.tgz``), by
   ``reference_names``; their ``/ExponentialMovingAverage`` copies when present.
4. ``.keras`` model files: rebuilt from their config (safe mode), then read as 1 or 2.

Every format goes through one strict assignment (``_assign``): every backbone weight must be found
with its exact shape and the source may hold no extra ones, else a ``ValueError`` names them and
nothing is assigned. Only the classifier may be left out (another class count, or none), and the
log says so.

Archives are unpacked by ``safe_extract`` into a temporary folder of ours, which refuses unsafe
members (absolute paths, ``..``, outside links, special files) and archives over
MAX_ARCHIVE_MEMBERS members or ``train.max_archive_mb`` before extracting anything, and is removed
afterwards.
"""

import dataclasses
import gzip
import itertools
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2.blocks import FusedMBConv, MBConv
from efficientnetv2.io.checkpointing import CheckpointWeights, find_checkpoint, is_run_checkpoint, read_weights
from efficientnetv2.io.keras_applications import build_keras_application, layer_map
from efficientnetv2.io import pretrained
from efficientnetv2.variants import get_variant, variant_names

__all__ = [
    "load_pretrained",
    "DEFAULT_MAX_UNPACKED_BYTES",
    "assign_run_checkpoint",
    "find_checkpoint",
    "reference_names",
    "safe_extract",
    "UnsafeArchiveError",
]

HEAD_LAYER = "predictions"
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
# train.max_archive_mb's default: the most bytes an archive may unpack to.
DEFAULT_MAX_UNPACKED_BYTES = 4096 * 2**20
# A checkpoint archive holds a handful of files; a few KB of tar headers can declare 100,000 empty ones.
MAX_ARCHIVE_MEMBERS = 10_000
_SUPPORTED = (
    "a run folder or checkpoint prefix of this project, a reference-release checkpoint (prefix or "
    "folder), a .tar/.tgz/.zip of one, a keras.applications .h5/.weights.h5, or a .keras model file"
)
_REFERENCE_EMA = "/ExponentialMovingAverage"
# Variable names a model weight can end with (optimizer slots such as ``kernel/RMSProp`` do not).
_WEIGHT_NAMES = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder or is not a plain file/folder, or
    the archive unpacks to more than the cap."""


# ------------------------------------------------------------------------------------------------
# The strict assignment shared by every format.


@dataclasses.dataclass
class _Slot:
    variable: object  # a Keras variable of the model
    key: str  # its name in the source
    head: bool  # part of the classifier


def _assign(slots, fetch, source_keys, origin, model_name, source_head=()):
    """Assigns ``fetch(slot.key)`` to every slot's variable, or raises without assigning anything.

    ``source_keys`` are the source's weight names, to find weights the model lacks; ``source_head``
    those of them that are the source's classifier, which a model without one ignores. ``fetch``
    returns an array or None. Returns a report: loaded and skipped variable paths, the reason for a
    skip, and whether the source's classifier went unused because the model has none.
    """
    missing, wrong, head_problems = [], [], []
    values = []
    for slot in slots:
        value = fetch(slot.key)
        if value is None:
            (head_problems if slot.head else missing).append(f"{slot.key} (absent)")
            continue
        value = np.asarray(value)
        if tuple(value.shape) != tuple(slot.variable.shape):
            problem = f"{slot.key}: {tuple(value.shape)} in the source, {tuple(slot.variable.shape)} in the model"
            (head_problems if slot.head else wrong).append(problem)
            continue
        values.append((slot, value))
    used = {slot.key for slot in slots}
    headless = not any(slot.head for slot in slots)
    unused_head = sorted(set(source_head) & set(source_keys)) if headless else []
    extra = sorted(k for k in source_keys if k not in used and k not in unused_head)
    if missing or wrong or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} backbone weight(s) missing: {_few(missing)}")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape: {_few(wrong)}")
        if extra:
            parts.append(f"{len(extra)} weight(s) the model does not have: {_few(extra)}")
        raise ValueError(
            f"{origin} does not match model {model_name!r}: {'; '.join(parts)}. "
            f"{_source_variant_words(source_keys)} Nothing was loaded."
        )
    skipped_reason = None
    if head_problems:
        skipped_reason = (
            f"classifier head not loaded ({'; '.join(head_problems)}): the model's "
            f"{HEAD_LAYER!r} layer keeps its initialization"
        )
        values = [(slot, value) for slot, value in values if not slot.head]
    for slot, value in values:
        slot.variable.assign(value.astype(slot.variable.dtype))
    loaded = [slot.variable.path for slot, _ in values]
    skipped = [slot.variable.path for slot in slots if slot.head] if skipped_reason else []
    return {"loaded": loaded, "skipped": skipped, "skipped_reason": skipped_reason,
            "source_head_unused": bool(unused_head)}


def _few(items, n=5):
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _log_report(report, origin, detail):
    logging.info("Loaded %d weights from %s (%s).", len(report["loaded"]), origin, detail)
    if report["skipped_reason"]:
        logging.warning("%s: %s", origin, report["skipped_reason"])
    if report["source_head_unused"]:
        logging.info("%s: the model has no classifier (include_top=False); the source's is not used.",
                     origin)


# ------------------------------------------------------------------------------------------------
# Paths: run folders, checkpoint folders, prefixes, archives.


@dataclasses.dataclass
class _Member:
    """One archive member, tar or zip alike."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "other"
    size: int  # declared in its header (0 unless a file)
    link: str  # a link's target
    info: object  # the TarInfo or ZipInfo


def _tar_members(tar):
    for m in tar:  # Header by header: a count over the cap stops the reading.
        kind = ("file" if m.isfile() else "dir" if m.isdir() else "symlink" if m.issym()
                else "hardlink" if m.islnk() else "other")
        yield _Member(m.name, kind, m.size if m.isfile() else 0, m.linkname, m)


def _zip_members(archive):
    for info in archive.infolist():  # zipfile writes links as plain files holding the target.
        yield _Member(info.filename, "dir" if info.is_dir() else "file", info.file_size, "", info)


# Python >= 3.11.4 (and backports): tarfile's "data" filter re-checks the rules of _check_member.
_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())
# What a truncated or garbage archive raises while being read.
_DAMAGED = (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError, zlib.error,
            gzip.BadGzipFile, lzma.LZMAError)


def _over_cap(archive, size, cap, what):
    return UnsafeArchiveError(
        f"archive {archive}: {what} {size / 2**20:.1f} MiB, over the cap of {cap / 2**20:g} MiB "
        "(raise train.max_archive_mb if this archive is expected to be that large); nothing was kept"
    )


def safe_extract(archive, destination, max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES):
    """Extracts the tar or zip ``archive`` into the empty (or new) folder ``destination``.

    Refused (``UnsafeArchiveError``, before anything is written): absolute member names, names that
    leave ``destination`` (``..``), symbolic or hard links whose target is absolute or outside
    ``destination``, devices, FIFOs and other special members, more than MAX_ARCHIVE_MEMBERS members,
    and members whose declared sizes add up to more than ``max_unpacked_bytes``. While extracting, the bytes written are counted too and
    extraction stops once they pass the cap. A damaged archive raises ``ValueError``. After any
    failure ``destination`` is left empty: everything in it was written here.
    """
    os.makedirs(destination, exist_ok=True)
    if os.listdir(destination):
        raise ValueError(f"safe_extract needs an empty folder; {destination} is not empty")
    root = os.path.realpath(destination)
    is_zip = archive.endswith((".zip", ".keras"))
    try:
        with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)) as opened:
            members = list(itertools.islice(_zip_members(opened) if is_zip else _tar_members(opened),
                                            MAX_ARCHIVE_MEMBERS + 1))
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UnsafeArchiveError(f"archive {archive} has more than {MAX_ARCHIVE_MEMBERS} members (a "
                                         "checkpoint archive holds a few files); nothing was kept")
            for member in members:
                _check_member(archive, root, destination, member)
            declared = sum(m.size for m in members)
            if declared > max_unpacked_bytes:
                raise _over_cap(archive, declared, max_unpacked_bytes, "its members declare")
            written = 0
            for member in members:
                if is_zip:
                    opened.extract(member.info, root)
                else:
                    opened.extract(member.info, root, **_TAR_FILTER)
                if member.kind == "file":
                    written += os.lstat(os.path.join(root, member.name)).st_size
                    if written > max_unpacked_bytes:
                        raise _over_cap(archive, written, max_unpacked_bytes, "unpacking wrote over")
    except _TAR_FILTER_ERROR as e:
        _empty(root)
        raise UnsafeArchiveError(f"archive {archive}: {e}") from None
    except _DAMAGED as e:
        _empty(root)
        kind = "zip" if is_zip else "tar"
        raise ValueError(f"archive {archive} is damaged or not a {kind} archive "
                         f"({type(e).__name__}: {e})") from None
    except BaseException:
        _empty(root)
        raise
    return destination


def _check_member(archive, root, destination, member):
    def inside(path):
        path = os.path.realpath(path)
        return path == root or path.startswith(root + os.sep)

    name = member.name
    if os.path.isabs(name) or name.startswith(("/", "\\")) or os.path.splitdrive(name)[0]:
        raise UnsafeArchiveError(f"archive {archive}: member {name!r} has an absolute path")
    target = os.path.join(root, name)
    if not inside(target):
        raise UnsafeArchiveError(f"archive {archive}: member {name!r} would be written outside "
                                 f"{destination}")
    if member.kind == "symlink":
        if os.path.isabs(member.link) or not inside(os.path.join(os.path.dirname(target), member.link)):
            raise UnsafeArchiveError(
                f"archive {archive}: symbolic link {name!r} -> {member.link!r} points outside {destination}")
    elif member.kind == "hardlink":
        if os.path.isabs(member.link) or not inside(os.path.join(root, member.link)):
            raise UnsafeArchiveError(
                f"archive {archive}: hard link {name!r} -> {member.link!r} points outside {destination}")
    elif member.kind == "other":
        raise UnsafeArchiveError(f"archive {archive}: member {name!r} is not a file or folder")


def _empty(folder):
    """Removes everything in ``folder`` (links themselves, never what they point to)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)


def _checkpoint_in(folder, archive):
    """The one checkpoint among the files unpacked into ``folder``, found by their ``.index`` files.

    A ``checkpoint`` index file only chooses among those: one naming a checkpoint elsewhere (an
    absolute path, ``..``) is ignored, so an archive's checkpoint is never read from outside it.
    """
    prefixes, chosen = [], set()
    for directory, _, files in os.walk(folder):
        prefixes += [os.path.join(directory, f[: -len(".index")]) for f in files if f.endswith(".index")]
        state = tf.train.get_checkpoint_state(directory) if "checkpoint" in files else None
        if state and state.model_checkpoint_path:
            named = os.path.realpath(os.path.join(directory, state.model_checkpoint_path))
            if os.path.exists(named + ".index") and named.startswith(os.path.realpath(folder) + os.sep):
                chosen.add(named)
            else:
                logging.warning("archive %s: its %s names %r, which is not among its files; ignored.",
                                archive, os.path.relpath(os.path.join(directory, "checkpoint"), folder),
                                state.model_checkpoint_path)
    if len(prefixes) > 1:
        prefixes = [p for p in prefixes if os.path.realpath(p) in chosen] or prefixes
    if len(prefixes) != 1:
        raise ValueError(f"archive {archive} holds {len(prefixes)} checkpoints "
                         f"({_few(os.path.relpath(p, folder) for p in prefixes)}); expected one")
    return prefixes[0]


# ------------------------------------------------------------------------------------------------
# Format 1: our own checkpoints.


def assign_run_checkpoint(model, weights, use_ema=True, allow_head_skip=True):
    """Assigns ``checkpointing.CheckpointWeights`` to ``model`` (strictly; see the module docstring)."""
    slots = [_Slot(v, v.path, v.path.startswith(HEAD_LAYER + "/")) for v in model.weights]
    # Only weights count as "extra": random-seed states and the like are not part of the network.
    source_keys = [k for k in weights.values if k.rsplit("/", 1)[-1] in _WEIGHT_NAMES]
    report = _assign(
        slots,
        lambda path: weights.value(path, use_ema),
        source_keys,
        origin=f"checkpoint {weights.prefix}",
        model_name=model.name,
        source_head=[k for k in source_keys if k.startswith(HEAD_LAYER + "/")],
    )
    if report["skipped_reason"] and not allow_head_skip:
        raise ValueError(f"checkpoint {weights.prefix}: {report['skipped_reason']}")
    loaded = set(report["loaded"])
    report["ema"] = bool(use_ema and weights.ema) and all(
        v.path in weights.ema for v in model.trainable_weights if v.path in loaded)
    return report


# A block's id in the source's weight names: ``block3b/...`` (this project), ``block3b_...``
# (keras.applications files), ``blocks_7/...`` (the reference release).
_BLOCK_ID = re.compile(r"(?:^|/)(?:block(\d+[a-z]+)[_/]|blocks_(\d+)/)")


def _source_variant_words(source_keys, unknown="Is it a checkpoint of another architecture?"):
    """A sentence naming the variant whose block count the source's weights have, for a mismatch
    (``unknown`` when their names do not show blocks)."""
    blocks = {m.group(1) or m.group(2) for key in source_keys for m in [_BLOCK_ID.search(key)] if m}
    for name in variant_names():
        spec = get_variant(name)
        if blocks and sum(s.scaled(spec.width, spec.depth).repeats for s in spec.block_args) == len(blocks):
            return (f"Its weights have {len(blocks)} blocks, as EfficientNetV2-{spec.name.upper()}: use "
                    f"--model={spec.name} (or a checkpoint of this model's variant).")
    return (f"Its weights have {len(blocks)} blocks, as no EfficientNetV2 variant: another architecture?"
            if blocks else unknown)


def _run_config_variant(prefix):
    """The variant named in the run's config.yaml (``model_dir/checkpoints/ckpt-N`` -> model_dir)."""
    for folder in (os.path.dirname(prefix), os.path.dirname(os.path.dirname(prefix))):
        path = os.path.join(folder, "config.yaml")
        if tf.io.gfile.exists(path):
            import yaml  # noqa: PLC0415

            with tf.io.gfile.GFile(path) as f:
                tree = yaml.safe_load(f.read()) or {}
            return (tree.get("model") or {}).get("variant"), path
    return None, None


def _load_run_checkpoint(model, prefix, spec):
    variant, config_path = _run_config_variant(prefix)
    if variant is not None and get_variant(variant).name != spec.name:
        raise ValueError(
            f"checkpoint {prefix} is of a run of EfficientNetV2-{get_variant(variant).name.upper()} "
            f"({config_path}); {_model_words(model, spec)}. Use a checkpoint of the same variant, or "
            f"train --model={get_variant(variant).name}."
        )
    weights = read_weights(prefix)
    report = assign_run_checkpoint(model, weights)
    _log_report(report, f"checkpoint {prefix}", "EMA weights" if report["ema"] else "training weights")
    return report


# ------------------------------------------------------------------------------------------------
# Format 2: keras.applications weight files.


def _h5_classes(path):
    """(include_top, classes) of a keras.applications weights file, read from its classifier bias."""
    import h5py  # noqa: PLC0415

    found = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or len(obj.shape) != 1:
            return
        parts = name.split("/")
        legacy_bias = HEAD_LAYER in parts and parts[-1].startswith("bias")
        keras3_bias = name.startswith("layers/dense/vars/") and parts[-1] == "1"
        if legacy_bias or keras3_bias:
            found.append(int(obj.shape[0]))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return (True, found[0]) if found else (False, None)


def _h5_names(path):
    """Every group and dataset name in an HDF5 file."""
    import h5py  # noqa: PLC0415

    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


def _load_keras_application_file(model, path, spec):
    import h5py  # noqa: PLC0415

    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 file (a keras.applications .h5 or .weights.h5 was "
                         "expected)")
    include_top, classes = _h5_classes(path)
    app = build_keras_application(spec, num_classes=classes or 1000, include_top=include_top)
    try:
        app.load_weights(path)
    except Exception as e:  # Keras raises ValueError or KeyError on a mismatched file.
        raise ValueError(
            f"{path} is not a keras.applications {spec.keras_application} weights file, which "
            f"{_model_words(model, spec)} needs (loading it into that model failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            f"{_source_variant_words(_h5_names(path), 'Is it a file of another variant?')}"
        ) from None
    return _assign_keras_application(model, app, f"keras.applications weights {path}")


def _assign_keras_application(model, app, origin):
    """Assigns the weights of the keras.applications model ``app`` to ours, by layer name."""
    theirs = {f"{layer.name}/{w.name}": w for layer in app.layers for w in layer.weights}
    slots = [
        _Slot(w, f"{name}/{w.name}", name == HEAD_LAYER)
        for name, layer in layer_map(model).items()
        for w in layer.weights
    ]
    report = _assign(
        slots,
        lambda key: None if key not in theirs else np.asarray(theirs[key].numpy()),
        theirs.keys(),
        origin=origin,
        model_name=model.name,
        source_head=[k for k in theirs if k.startswith(HEAD_LAYER + "/")],
    )
    with_head = any(k.startswith(HEAD_LAYER + "/") for k in theirs)
    _log_report(report, origin, f"{'with' if with_head else 'without'} classifier")
    report["ema"] = False
    return report


# ------------------------------------------------------------------------------------------------
# Format 3: the reference release's TF checkpoints.


def _reference_layer_names(block):
    """{our sublayer attribute: reference layer name} for one block, in the reference's naming.

    Within a block the reference names convolutions ``conv2d``, ``conv2d_1`` and batch norms
    ``tpu_batch_normalization``, ``..._1``, ``..._2`` in creation order (expand before project;
    expand_bn, the depthwise's bn, project_bn), the depthwise conv ``depthwise_conv2d`` and the SE
    convs ``se/conv2d`` and ``se/conv2d_1``. This gives, for the three block types of EfficientNetV2:
    Fused-MBConv e1 (project_conv kxk -> conv2d), Fused-MBConv e>1 (expand_conv -> conv2d,
    project_conv -> conv2d_1) and MBConv (expand -> conv2d, depthwise -> depthwise_conv2d,
    project -> conv2d_1; bns _, _1, _2).
    """
    names = {}
    convs = [a for a in ("expand_conv", "project_conv") if getattr(block, a, None) is not None]
    for i, attr in enumerate(convs):
        names[attr] = "conv2d" + (f"_{i}" if i else "")
    norms = [a for a in ("expand_bn", "bn", "project_bn") if getattr(block, a, None) is not None]
    for i, attr in enumerate(norms):
        names[attr] = "tpu_batch_normalization" + (f"_{i}" if i else "")
    if getattr(block, "dwconv2", None) is not None:
        names["dwconv2"] = "depthwise_conv2d"
    return names


def reference_names(model, prefix):
    """{variable path in ``model``: variable name in a reference checkpoint under ``prefix``}.

    ``prefix`` is the reference model's name, e.g. ``efficientnetv2-s``. Blocks are numbered
    globally, ``blocks_0`` ... ``blocks_{N-1}``, in the order the model applies them.
    """
    names = {}

    def add(layer, scope, rename=None):
        for w in layer.weights:
            leaf = (rename or {}).get(w.name, w.name)
            names[w.path] = f"{prefix}/{scope}/{leaf}"

    fixed = {
        "stem_conv": "stem/conv2d",
        "stem_bn": "stem/tpu_batch_normalization",
        "top_conv": "head/conv2d",
        "top_bn": "head/tpu_batch_normalization",
        HEAD_LAYER: "head/dense",
    }
    index = 0
    for layer in model.layers:
        if isinstance(layer, (MBConv, FusedMBConv)):
            scope = f"blocks_{index}"
            for attr, ref in _reference_layer_names(layer).items():
                sub = getattr(layer, attr)
                add(sub, f"{scope}/{ref}", {"kernel": "depthwise_kernel"} if attr == "dwconv2" else None)
            if layer.se is not None:
                add(layer.se.se_reduce, f"{scope}/se/conv2d")
                add(layer.se.se_expand, f"{scope}/se/conv2d_1")
            index += 1
        elif layer.name in fixed:
            add(layer, fixed[layer.name])
        elif layer.weights:
            raise ValueError(f"layer {layer.name!r} has no counterpart in the reference release's model")
    return names


def _reference_prefix(keys):
    suffix = "/stem/conv2d/kernel"
    prefixes = sorted({k[: -len(suffix)] for k in keys if k.endswith(suffix)})
    if len(prefixes) > 1:
        raise ValueError(f"checkpoint holds several models ({prefixes}); expected one")
    return prefixes[0] if prefixes else None


def _load_reference_checkpoint(model, prefix_path, spec):
    reader = tf.train.load_checkpoint(prefix_path)
    shapes = reader.get_variable_to_shape_map()
    model_prefix = _reference_prefix(shapes)
    try:
        theirs = get_variant(model_prefix)
    except ValueError:
        raise ValueError(
            f"checkpoint {prefix_path} holds model {model_prefix!r}, which is not an EfficientNetV2 "
            "variant of the reference release (efficientnetv2-b0 ... -xl)"
        ) from None
    if theirs.name != spec.name:
        raise ValueError(
            f"checkpoint {prefix_path} holds {model_prefix} (EfficientNetV2-{theirs.name.upper()}); "
            f"{_model_words(model, spec)}. Use the checkpoint of the same variant."
        )
    names = reference_names(model, model_prefix)
    # Batch norms without the TPU variant are named batch_normalization in the stem and head.
    aliases = {}
    for path, name in names.items():
        if name not in shapes and "/tpu_batch_normalization" in name:
            aliases[path] = name.replace("/tpu_batch_normalization", "/batch_normalization")
    names.update({p: a for p, a in aliases.items() if a in shapes})
    source_keys = [
        k for k in shapes
        if k.startswith(model_prefix + "/") and k.rsplit("/", 1)[-1] in _WEIGHT_NAMES
    ]
    used_ema = []

    def fetch(name):
        if name + _REFERENCE_EMA in shapes:
            used_ema.append(name)
            return reader.get_tensor(name + _REFERENCE_EMA)
        return reader.get_tensor(name) if name in shapes else None

    slots = [_Slot(v, names[v.path], v.path.startswith(HEAD_LAYER + "/")) for v in model.weights]
    head = f"{model_prefix}/head/dense/"
    report = _assign(slots, fetch, source_keys, origin=f"reference checkpoint {prefix_path}",
                     model_name=model.name, source_head=[k for k in source_keys if k.startswith(head)])
    report["ema"] = bool(used_ema)
    _log_report(report, f"reference checkpoint {prefix_path}",
                f"{len(set(used_ema))} of {len(slots)} from their ExponentialMovingAverage")
    return report


# ------------------------------------------------------------------------------------------------


def load_pretrained(model, path, variant, max_unpacked_bytes=DEFAULT_MAX_UNPACKED_BYTES):
    """Loads pretrained weights from ``path`` into ``model`` (EfficientNetV2-``variant``).

    ``path``: one of our run folders or checkpoints, a keras.applications ``.h5``/``.weights.h5``, a
    reference-release checkpoint (prefix or folder), a ``.tar``/``.tgz``/``.zip`` of one, or a
    ``.keras`` model file; or a published name (``imagenet``, ``imagenet21k``, ``imagenet21k-ft1k``),
    whose file ``pretrained.fetch`` finds in the cache or downloads. An archive or ``.keras`` file may
    unpack to at most ``max_unpacked_bytes`` (``train.max_archive_mb`` MiB). Returns a report
    (``loaded``, ``skipped``, ``skipped_reason``, ``source_head_unused``, ``ema``, ``format``). Raises
    ``FileNotFoundError`` when there is nothing at ``path``, ``OSError`` when a name's download fails,
    and ``ValueError`` when it is damaged, unsafe or does not fit the model; in all cases the model is
    unchanged.
    """
    spec = _model_spec(model, variant)
    if pretrained.is_weights_name(path):
        path = pretrained.fetch_for_model(path, model, spec)
    path = os.fspath(path)
    if path.endswith(_ARCHIVE_SUFFIXES + (".keras",)):
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{'model file' if path.endswith('.keras') else 'archive'} {path} not found")
        # The archive unpacks one level down, so nothing above what it holds is ours to read.
        folder = tempfile.mkdtemp(prefix="efficientnetv2-import-")
        try:
            unpacked = safe_extract(path, os.path.join(folder, "archive"), max_unpacked_bytes)
            if path.endswith(".keras"):
                return _load_keras_file(model, path, unpacked, spec)
            return _load_checkpoint(model, _checkpoint_in(unpacked, path), spec)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if path.endswith(".h5"):
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"weights file {path} not found")
        report = _load_keras_application_file(model, path, spec)
        report["format"] = "keras.applications"
        return report
    if not tf.io.gfile.exists(path + ".index") and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
        raise ValueError(f"{path} is not a format init_checkpoint reads; expected {_SUPPORTED}")
    return _load_checkpoint(model, find_checkpoint(path), spec)


def _load_checkpoint(model, prefix, spec):
    """Loads our run checkpoint or a reference checkpoint at ``prefix``, whichever it is."""
    if is_run_checkpoint(prefix):
        report = _load_run_checkpoint(model, prefix, spec)
        report["format"] = "run checkpoint"
    elif _reference_prefix(tf.train.load_checkpoint(prefix).get_variable_to_shape_map()) is not None:
        report = _load_reference_checkpoint(model, prefix, spec)
        report["format"] = "reference checkpoint"
    else:
        raise ValueError(
            f"cannot tell what {prefix} holds: it is neither one of this project's checkpoints (no "
            "'model' in its object graph) nor a reference-release checkpoint (no "
            "'<model>/stem/conv2d/kernel' variable)"
        )
    return report


def _load_keras_file(model, path, folder, spec):
    """Loads the weights of the ``.keras`` file ``path``, unpacked into ``folder``.

    The saved model is rebuilt from its ``config.json`` in safe mode (no Lambda code runs) and given
    its ``model.weights.h5``; one of ours is then read by variable path (as a run checkpoint without
    EMA), a keras.applications one by layer name.
    """
    config_path, weights_path = (os.path.join(folder, n) for n in ("config.json", "model.weights.h5"))
    if not (os.path.isfile(config_path) and os.path.isfile(weights_path)):
        raise ValueError(f"{path} is not a Keras model file (no config.json and model.weights.h5 in it)")
    try:
        with open(config_path) as f:
            config = json.load(f)
        config["compile_config"] = None  # Weights only: no optimizer or loss is rebuilt.
        saved = keras.saving.deserialize_keras_object(config, safe_mode=True)
        saved.load_weights(weights_path)
    except Exception as e:  # Keras raises many types on a config or weights it cannot read.
        raise ValueError(f"{path} could not be rebuilt as a Keras model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    try:
        theirs = get_variant(saved.name)
    except ValueError:
        theirs = None  # A custom name: the shapes decide.
    if theirs is not None and theirs.name != spec.name:
        raise ValueError(f"{path} holds model {saved.name!r} (EfficientNetV2-{theirs.name.upper()}); "
                         f"{_model_words(model, spec)}. Use a file of the same variant.")
    if any(isinstance(layer, (MBConv, FusedMBConv)) for layer in saved.layers):
        weights = CheckpointWeights(prefix=path, values={w.path: np.asarray(w) for w in saved.weights}, ema={})
        report = assign_run_checkpoint(model, weights)
        _log_report(report, f"model file {path}", "saved weights")
        report["format"] = "keras model file"
    else:
        report = _assign_keras_application(model, saved, f"keras.applications model file {path}")
        report["format"] = "keras.applications"
    return report


def _model_spec(model, variant):
    """The variant of ``model``: ``variant``, refused when the model's own name names another."""
    spec = get_variant(variant)
    try:
        named = get_variant(model.name)
    except ValueError:
        return spec  # A custom name: the argument is all there is to go by.
    if named.name != spec.name:
        raise ValueError(
            f"variant {variant!r} (EfficientNetV2-{spec.name.upper()}) was given for the model "
            f"{model.name!r}, which is EfficientNetV2-{named.name.upper()}; pass variant={named.name!r}"
        )
    return spec


def _model_words(model, spec):
    """What ``model`` is, for a message: its name and its variant (``_model_spec``'s)."""
    try:
        named = get_variant(model.name)
    except ValueError:  # A custom name: the variant is the argument's word.
        return f"the model {model.name!r} was given as EfficientNetV2-{spec.name.upper()}"
    return f"the model {model.name!r} is EfficientNetV2-{named.name.upper()}"
