"""Pretrained weights by name (``efficientnetv2.io.pretrained``), served by a real HTTP server.

A ``http.server`` on localhost serves weight files the tests make (a keras.applications ``.h5`` with
random weights, a reference-layout ``.tgz``); the table points at it through
``EFFICIENTNETV2_WEIGHTS_TABLE``, and ``KERAS_HOME`` is a temporary folder. Golden values: the weights
of the file loaded by its local path, and hashes computed here with ``hashlib``.
"""

import hashlib
import http.server
import json
import os
import re
import tarfile
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import build_model
from efficientnetv2.io import pretrained, weights_import
from tests.weights_randomizer import randomize_weights

SIZE = 32
TINY_BLOCKS = "r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r1_k3_s2_e2_i16_o16_se0.25"
TGZ = "efficientnetv2-s-21k-ft1k.tgz"


class _Server:
    """Serves ``files`` ({name: bytes}); a name in ``truncate`` gets its full Content-Length but only
    half of its bytes before the connection closes. ``requests`` counts what was asked."""

    def __init__(self):
        self.files, self.truncate, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if name in server.truncate else data)
                if name in server.truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


def _table(tmp_path, monkeypatch, rows):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(rows))
    monkeypatch.setenv(pretrained.TABLE_ENV, str(path))


def tiny(num_classes=10, **kwargs):
    return build_model("s", num_classes=num_classes, input_shape=(SIZE, SIZE, 3), blocks=TINY_BLOCKS,
                       head_filters=32, **kwargs)


def _reference_tgz(folder, model):
    """A reference-layout archive of ``model``'s weights (names from ``reference_names``: the naming is
    tested in test_weights_import.py; here the transport is)."""
    names = weights_import.reference_names(model, "efficientnetv2-s")
    prefix = os.path.join(folder, "efficientnetv2-s", "model")
    os.makedirs(os.path.dirname(prefix))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[names[w.path] for w in model.weights],
                      shape_and_slices=[""] * len(model.weights), tensors=[np.array(w) for w in model.weights])
    archive = os.path.join(folder, TGZ)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.dirname(prefix), arcname="efficientnetv2-s")
    with open(archive, "rb") as f:
        return f.read()


@pytest.fixture
def source(tmp_path):
    model = tiny()
    randomize_weights(model, seed=7)
    return model, _reference_tgz(str(tmp_path / "made"), model)


def _backbone(model):
    return {w.path: np.array(w) for w in model.weights if not w.path.startswith("predictions/")}


def _assert_same_backbone(model, expected):
    got = _backbone(model)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def _cache_entries(home):
    folder = home / "models" / "efficientnetv2"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_first_use_downloads_then_the_cache_serves_with_the_server_stopped(source, server, home, tmp_path,
                                                                         monkeypatch):
    model, data = source
    server.files[TGZ] = data
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": hashlib.sha256(data).hexdigest()}})
    first = build_model("s", num_classes=10, input_shape=(SIZE, SIZE, 3), blocks=TINY_BLOCKS, head_filters=32,
                        weights="imagenet21k-ft1k")
    _assert_same_backbone(first, _backbone(model))
    assert server.requests == [TGZ]
    assert _cache_entries(home) == [TGZ]
    server.stop()
    second = tiny(num_classes=3, weights="imagenet21k-ft1k")  # Offline; another head, a new one.
    _assert_same_backbone(second, _backbone(model))
    assert tuple(second.get_layer("predictions").kernel.shape) == (32, 3)


def test_without_a_published_hash_the_first_download_is_recorded_and_a_changed_copy_not_trusted(
        source, server, home, tmp_path, monkeypatch):
    model, data = source
    server.files[TGZ] = data
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": None}})
    tiny(weights="imagenet21k-ft1k")
    recorded = (home / "models" / "efficientnetv2" / (TGZ + ".sha256")).read_text().strip()
    assert recorded == hashlib.sha256(data).hexdigest()
    cached = home / "models" / "efficientnetv2" / TGZ
    cached.write_bytes(data[:100])  # Damaged after the download: downloaded again.
    _assert_same_backbone(tiny(weights="imagenet21k-ft1k"), _backbone(model))
    assert server.requests == [TGZ, TGZ]
    assert cached.read_bytes() == data


def test_wrong_hash_refused_and_not_kept(source, server, home, tmp_path, monkeypatch):
    _, data = source
    server.files[TGZ] = data
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": "0" * 64}})
    target = tiny()
    before = _backbone(target)
    with pytest.raises(ValueError, match=rf"{re.escape(server.url + TGZ)} downloaded with hash "
                                         rf"{hashlib.sha256(data).hexdigest()}, not the published 0{{64}}"):
        weights_import.load_pretrained(target, "imagenet21k-ft1k", "s")
    assert _cache_entries(home) == []
    _assert_same_backbone(target, before)


def test_a_connection_closed_halfway_leaves_no_cache_entry(source, server, home, tmp_path, monkeypatch):
    _, data = source
    server.files[TGZ] = data
    server.truncate.add(TGZ)
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": None}})
    with pytest.raises(OSError, match=rf"cannot download imagenet21k-ft1k weights of EfficientNetV2-S from "
                                      rf"{re.escape(server.url + TGZ)} \(.*\); without network"):
        tiny(weights="imagenet21k-ft1k")
    assert _cache_entries(home) == []


def test_an_interrupted_download_leaves_no_cache_entry(source, server, home, tmp_path, monkeypatch):
    """Ctrl-C while the file arrives: the partial file goes, nothing is cached."""
    _, data = source
    server.files[TGZ] = data
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": None}})
    original = keras.utils.get_file

    def interrupted(fname, origin, cache_dir, **kwargs):
        with open(os.path.join(cache_dir, kwargs["cache_subdir"], fname), "wb") as f:
            f.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.utils, "get_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny(weights="imagenet21k-ft1k")
    assert _cache_entries(home) == []
    monkeypatch.setattr(keras.utils, "get_file", original)


def test_unreachable_server_is_one_line_naming_the_url_and_the_way_round(home, tmp_path, monkeypatch):
    stopped = _Server()
    stopped.stop()
    _table(tmp_path, monkeypatch, {TGZ: {"url": stopped.url + TGZ, "hash": None}})
    with pytest.raises(OSError) as caught:
        tiny(weights="imagenet21k-ft1k")
    message = str(caught.value)
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert stopped.url + TGZ in message and f"train.init_checkpoint=/path/to/{TGZ}" in message


def test_unknown_name_or_variant_without_it_lists_what_exists():
    with pytest.raises(ValueError, match=r"no 'imagenet' weights are published for EfficientNetV2-XL; it has "
                                         r"\['imagenet21k', 'imagenet21k-ft1k'\], or pass a path"):
        pretrained.weights_entry("imagenet", "xl")
    with pytest.raises(ValueError, match=r"unknown weights name 'imagenet22k'; expected one of \['imagenet', "
                                         r"'imagenet21k', 'imagenet21k-ft1k'\] or a path"):
        pretrained.weights_entry("imagenet22k", "s")


def test_keras_applications_table_is_read_from_keras():
    """The ``imagenet`` rows are Keras' own (its URL and md5 for each file); this fails when Keras
    moves or renames that table."""
    from keras.src.applications import efficientnet_v2  # noqa: PLC0415

    for variant, key in (("b0", "b0"), ("s", "-s"), ("l", "-l")):
        top, notop = pretrained.weights_entry("imagenet", variant), pretrained.weights_entry("imagenet", variant, False)
        assert top.url == f"{efficientnet_v2.BASE_WEIGHTS_PATH}efficientnetv2-{variant}.h5"
        assert notop.url.endswith(f"efficientnetv2-{variant}_notop.h5")
        assert (top.hash, notop.hash) == efficientnet_v2.WEIGHTS_HASHES[key]
    ref = pretrained.weights_entry("imagenet21k", "xl")
    assert ref.url == "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2/efficientnetv2-xl-21k.tgz"
    assert ref.hash is None


@pytest.fixture(scope="module")
def b0_notop(tmp_path_factory):
    """keras.applications B0 without its classifier, random weights, saved as the distributed files are."""
    from keras.src.legacy.saving import legacy_h5_format  # noqa: PLC0415
    import h5py  # noqa: PLC0415

    app = keras.applications.EfficientNetV2B0(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomize_weights(app, seed=11)
    path = str(tmp_path_factory.mktemp("b0") / "efficientnetv2-b0_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    with open(path, "rb") as f:
        return path, f.read()


def test_imagenet_by_name_equals_the_file_by_path_and_keras_cache_is_used(b0_notop, server, home, tmp_path,
                                                                          monkeypatch):
    path, data = b0_notop
    name = "efficientnetv2-b0_notop.h5"
    server.files[name] = data
    _table(tmp_path, monkeypatch, {name: {"url": server.url + name, "hash": hashlib.md5(data).hexdigest()}})
    by_name = build_model("b0", include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3), weights="imagenet")
    by_path = build_model("b0", include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3), weights=path)
    _assert_same_backbone(by_name, _backbone(by_path))
    assert server.requests == [name]
    # keras.applications' own cached copy (models/) is used as it is, not downloaded or copied.
    (home / "models" / "efficientnetv2" / name).unlink()
    (home / "models" / name).write_bytes(data)
    build_model("b0", num_classes=4, input_shape=(SIZE, SIZE, 3), weights="imagenet")
    assert server.requests == [name] and _cache_entries(home) == []


def test_init_checkpoint_by_name_gives_the_weights_of_build_model(server, home, tmp_path, monkeypatch):
    from efficientnetv2.train import training  # noqa: PLC0415
    from tests.training_helpers import tiny_config  # noqa: PLC0415

    config = tiny_config(**{"train.init_checkpoint": "imagenet21k-ft1k"})
    model = build_model("s", num_classes=10, blocks=config.model.blocks, head_filters=config.model.head_filters)
    randomize_weights(model, seed=5)
    data = _reference_tgz(str(tmp_path / "made"), model)
    server.files[TGZ] = data
    _table(tmp_path, monkeypatch, {TGZ: {"url": server.url + TGZ, "hash": hashlib.sha256(data).hexdigest()}})
    trained = training.train(config, str(tmp_path / "run"), verbose=0, max_epochs=0)["model"]
    built = build_model("s", num_classes=10, blocks=config.model.blocks, head_filters=config.model.head_filters,
                        weights="imagenet21k-ft1k")
    _assert_same_backbone(trained, _backbone(built))
    _assert_same_backbone(built, _backbone(model))
    assert server.requests == [TGZ]  # The run downloaded it; build_model found it cached.


def test_finetune_recipe_starts_from_imagenet_with_the_variants_architecture():
    """hparams/finetune.yaml: ImageNet weights by name, and no architecture override that would make
    them not fit."""
    from hparams import config as config_lib  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_lib.load_config(dataset="synthetic", model="b0",
                                    hparams_file=os.path.join(root, "hparams", "finetune.yaml"))
    default = config_lib.load_config(dataset="synthetic", model="b0")
    assert config.train.init_checkpoint == "imagenet"
    assert (config.model.width, config.model.depth, config.model.blocks, config.model.head_filters) == (
        default.model.width, default.model.depth, default.model.blocks, default.model.head_filters)
