"""Pretrained weights by name: where each file is published, and a download that never caches a bad one.

``WEIGHTS_NAMES``: ``imagenet`` is keras.applications' ImageNet-1k files (B0-B3, S, M, L), with the
URL and md5 hashes read from Keras' own table; ``imagenet21k`` and ``imagenet21k-ft1k`` are the
reference release's ``.tgz`` checkpoints (B0-B3, S, M, L, XL), which it publishes without hashes: for
those, the size the server announces is checked and the archive and every weight's shape are checked
on import (``weights_import``), and the first download's sha256 is kept beside the file so a cached
copy that changed afterwards is not trusted.

``fetch(name, variant)`` returns a local file: one found in the cache (``$KERAS_HOME`` or
``~/.keras``; keras.applications' own ``models/`` copy is used when its hash matches, our downloads go
to ``models/efficientnetv2/``), else one downloaded with ``keras.utils.get_file`` (progress bar) to a
temporary name, its hash checked, then renamed into place: an interrupted or corrupt download never
becomes the cached file.

The table can be redirected (a mirror, an offline site, the tests) with the environment variable
``EFFICIENTNETV2_WEIGHTS_TABLE``: the path of a JSON file mapping a published file name
(``efficientnetv2-s_notop.h5``, ``efficientnetv2-s-21k.tgz``) to ``{"url": ..., "hash": ...}`` (md5
or sha256 hex; ``null`` for none); its entries replace the built-in ones.
"""

import dataclasses
import hashlib
import json
import os

from absl import logging
import keras

from efficientnetv2.variants import get_variant

__all__ = ["WEIGHTS_NAMES", "TABLE_ENV", "WeightsEntry", "weights_entry", "fetch", "fetch_for_model",
           "is_weights_name", "cache_dir"]

TABLE_ENV = "EFFICIENTNETV2_WEIGHTS_TABLE"
REFERENCE_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2/"
# Which variants each name covers (keras.applications has no XL; the reference release has no XL 1k).
_COVERED = {
    "imagenet": ("b0", "b1", "b2", "b3", "s", "m", "l"),
    "imagenet21k": ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"),
    "imagenet21k-ft1k": ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"),
}
WEIGHTS_NAMES = tuple(_COVERED)
_REFERENCE_SUFFIX = {"imagenet21k": "-21k", "imagenet21k-ft1k": "-21k-ft1k"}
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One published weights file: its name in the cache, where it is, and its published hash."""

    file: str
    url: str
    hash: str | None  # md5 or sha256 hex; None where the publisher gives none
    keras_cache: bool  # also looked for in keras.applications' own cache (``models/``)


def is_weights_name(value):
    return isinstance(value, str) and value in WEIGHTS_NAMES


def _keras_table():
    """keras.applications' EfficientNetV2 base URL and {key: (top md5, notop md5)}, from Keras itself."""
    from keras.src.applications import efficientnet_v2  # noqa: PLC0415 (Keras keeps no public copy)

    return efficientnet_v2.BASE_WEIGHTS_PATH, efficientnet_v2.WEIGHTS_HASHES


def weights_entry(name, variant, include_top=True):
    """The published file of ``name`` weights for ``variant``; ``include_top=False`` picks the file
    without the classifier where one is published. Raises ``ValueError`` naming what exists."""
    spec = get_variant(variant)
    if name not in _COVERED:
        raise ValueError(f"unknown weights name {name!r}; expected one of {list(WEIGHTS_NAMES)} or a path")
    if spec.name not in _COVERED[name]:
        names = [n for n in WEIGHTS_NAMES if spec.name in _COVERED[n]]
        raise ValueError(f"no {name!r} weights are published for EfficientNetV2-{spec.name.upper()}; "
                         f"it has {names}, or pass a path")
    if name == "imagenet":
        base, hashes = _keras_table()
        key = spec.name if spec.name.startswith("b") else f"-{spec.name}"
        file = f"efficientnetv2-{spec.name}{'' if include_top else '_notop'}.h5"
        entry = WeightsEntry(file, base + file, hashes[key][0 if include_top else 1], keras_cache=True)
    else:
        file = f"efficientnetv2-{spec.name}{_REFERENCE_SUFFIX[name]}.tgz"
        entry = WeightsEntry(file, REFERENCE_URL + file, None, keras_cache=False)
    return _redirected(entry)


def _redirected(entry):
    path = os.environ.get(TABLE_ENV)
    if not path:
        return entry
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{TABLE_ENV}={path}: cannot read it as a JSON weights table ({e})") from None
    if entry.file not in table:
        return entry
    row = table[entry.file]
    if not isinstance(row, dict) or "url" not in row:
        raise ValueError(f"{TABLE_ENV}={path}: entry {entry.file!r} needs a 'url' (and a 'hash' or null)")
    return dataclasses.replace(entry, url=row["url"], hash=row.get("hash"))


def cache_dir():
    """Where our downloads go: ``$KERAS_HOME`` (or ``~/.keras``) ``/models/efficientnetv2``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "efficientnetv2")


def _file_hash(path, expected):
    """``path``'s hex digest in the algorithm of ``expected`` (md5 for 32 digits, else sha256)."""
    algorithm = hashlib.md5 if expected is not None and len(expected) == 32 else hashlib.sha256
    digest = algorithm(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _trusted(path, entry):
    """Whether the cached ``path`` is ``entry``'s file: its published hash, else the sha256 recorded at
    its download (a file without that record is not trusted)."""
    if entry.hash is not None:
        return _file_hash(path, entry.hash) == entry.hash.lower()
    try:
        with open(path + ".sha256", encoding="ascii") as f:
            recorded = f.read().strip()
    except OSError:
        return False
    return _file_hash(path, recorded) == recorded


def fetch(name, variant, include_top=True):
    """A local path of ``name`` weights for ``variant``, from the cache or downloaded into it."""
    entry = weights_entry(name, variant, include_top)
    if entry.keras_cache:  # keras.applications' own download, read but never written here.
        theirs = os.path.join(os.path.dirname(cache_dir()), entry.file)
        if os.path.isfile(theirs) and _trusted(theirs, entry):
            logging.info("Using %s weights from keras.applications' cache: %s", name, theirs)
            return theirs
    folder = cache_dir()
    path = os.path.join(folder, entry.file)
    if os.path.isfile(path):
        if _trusted(path, entry):
            logging.info("Using cached %s weights: %s", name, path)
            return path
        logging.warning("Cached %s does not match its hash; downloading it again.", path)
        os.remove(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the weights cache {folder} ({e.strerror}); set KERAS_HOME to a "
                      "writable folder") from None
    _download(entry, name, get_variant(variant), path)
    return path


def _download(entry, name, spec, path):
    """Downloads ``entry`` to ``path`` through a temporary file that becomes ``path`` only once whole
    and verified; the temporary file is removed whatever happens (Ctrl-C included)."""
    partial = f"{path}.part-{os.getpid()}"
    try:
        try:
            keras.utils.get_file(os.path.basename(partial), entry.url, cache_dir=os.path.dirname(path),
                                 cache_subdir=".", force_download=True)
        except Exception as e:  # get_file wraps every fetch failure in a bare Exception.
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise OSError(
                f"cannot download {name} weights of EfficientNetV2-{spec.name.upper()} from {entry.url} "
                f"({reason}); without network, fetch that file elsewhere and pass its path instead of "
                f"{name!r} (train.init_checkpoint=/path/to/{entry.file})"
            ) from None
        digest = _file_hash(partial, entry.hash)
        if entry.hash is not None and digest != entry.hash.lower():
            raise ValueError(f"{entry.url} downloaded with hash {digest}, not the published {entry.hash}: "
                             "the file was removed and nothing was loaded")
        if entry.hash is None:
            logging.warning("%s has no published hash; its size, archive and every weight's shape are "
                            "checked, and its sha256 %s is kept to check the cached copy.", entry.url, digest)
            with open(path + ".sha256", "w", encoding="ascii") as f:
                f.write(digest + "\n")
        os.replace(partial, path)
        logging.info("Saved %s weights to %s", name, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def fetch_for_model(name, model, variant):
    """``fetch`` for ``model``: the file with the classifier only when the model has ImageNet's 1,000
    classes (else the smaller file without it, where one is published)."""
    head = next((layer for layer in model.layers if layer.name == "predictions"), None)
    return fetch(name, variant, include_top=head is not None and head.units == 1000)
