"""export: a tiny trained run exported, then loaded back in fresh processes and compared.

The reference for every format is the Keras inference model restored the way evaluation restores
(``RunCheckpoint`` + ``swap_ema_weights``), not the exporter's own reading of the checkpoint.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import decode
from efficientnetv2 import build_model
from efficientnetv2.io import export, onnx_export
from efficientnetv2.train import compilation, optimizers, training
from efficientnetv2.io.checkpointing import CheckpointError, RunCheckpoint
from efficientnetv2.model import build_model_from_config
from efficientnetv2.variants import get_variant
from tests.training_helpers import tiny_config
from tests.weights_randomizer import randomize_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 48  # tiny_config's eval.image_size.
# One progressive stage (one traced training function) and few steps: the run takes seconds.
RUN = {"train.epochs": 2, "train.steps_per_epoch": 2, "progressive.num_stages": 1}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}


def run_python(code, timeout=300):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for 2 epochs of 2 steps (checkpoints ckpt-2 and ckpt-4), exported once."""
    folder = tmp_path_factory.mktemp("export")
    config = tiny_config(**RUN)
    model_dir = str(folder / "run")
    training.train(config, model_dir, verbose=0)
    export_dir = str(folder / "export")
    written = export.export_run(config, model_dir, export_dir)
    return {"config": config, "model_dir": model_dir, "export_dir": export_dir, "written": written,
            "folder": folder}


@pytest.fixture(scope="module")
def reference_model(run):
    """The run's latest checkpoint restored as evaluation does, EMA weights swapped in, + softmax."""
    config = run["config"]
    plan = training.make_plan(config, __import__("datasets").get_source("synthetic"))
    model = build_model_from_config(config.model, plan.num_classes, dropout_rate=0.0)
    optimizer = compilation.compile_model(config, plan, model)
    checkpoint = RunCheckpoint(os.path.join(run["model_dir"], "checkpoints"), model, optimizer)
    checkpoint.restore_latest()
    with optimizers.swap_ema_weights(model, optimizer) as used:
        assert used
        weights = [np.array(w) for w in model.weights]
    clone = build_model_from_config(config.model, plan.num_classes, dropout_rate=0.0)
    clone.set_weights(weights)
    return lambda x: np.asarray(keras.activations.softmax(clone(np.asarray(x, "float32"), training=False)))


def synthetic_images(n, height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (n, 1, 1, 3))
    grad = np.linspace(0, 1, width)[None, None, :, None] * rng.uniform(-120, 120, (n, 1, 1, 3))
    noise = rng.normal(0, 20, (n, height, width, 3))
    return np.clip(base + grad + noise, 0, 255).astype("uint8")


def test_written_files(run):
    written = run["written"]
    onnx = {"onnx"} if onnx_export.available() else set()
    assert set(written) == {"saved_model", "keras", "tflite_float32", "tflite_dynamic_range", "labels",
                            "manifest"} | onnx
    for path in written.values():
        assert os.path.exists(path) and path.startswith(run["export_dir"])
    manifest = json.loads(open(written["manifest"]).read())
    assert manifest["image_size"] == SIZE and manifest["num_classes"] == 10 and manifest["ema_weights"]
    assert manifest["checkpoint"].endswith("ckpt-4")
    # The tiny model overrides the architecture: no keras.applications file, and export.json says why.
    assert "model.blocks" in manifest["skipped"]["keras_applications_weights"]
    assert open(written["labels"]).read().split("\n")[:2] == ["circle", "square"]


def test_inference_model_matches_evaluation_restore(run, reference_model):
    model, info = export.load_inference_model(run["config"], run["model_dir"])
    x = synthetic_images(3, SIZE, SIZE).astype("float32")
    assert info.ema and info.num_classes == 10 and info.image_size == SIZE
    assert model.get_layer("top_dropout").rate == 0.0
    np.testing.assert_allclose(np.asarray(model(x)), reference_model(x), atol=1e-6)


def test_saved_model_and_keras_file_in_a_fresh_process(run, reference_model, tmp_path):
    x = synthetic_images(2, SIZE, SIZE, seed=1)
    other = synthetic_images(2, 40, 60, seed=2)
    encoded = [tf.io.encode_png(x[0]).numpy(), tf.io.encode_jpeg(other[1], quality=95).numpy()]
    inputs = str(tmp_path / "inputs.npz")
    np.savez(inputs, x=x, other=other, encoded=np.array(encoded, dtype=object))
    outputs = str(tmp_path / "outputs.npz")
    result = run_python(f"""
        import json, numpy as np, tensorflow as tf
        data = np.load({inputs!r}, allow_pickle=True)
        loaded = tf.saved_model.load({run["written"]["saved_model"]!r})
        default = loaded.signatures["serving_default"]
        out = {{}}
        r = default(images=tf.constant(data["x"].astype("float32")))
        out.update({{"default_" + k: v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
                     for k, v in r.items()}})
        out["other"] = default(images=tf.constant(data["other"].astype("float32")))["probabilities"].numpy()
        out["uint8"] = loaded.signatures["serving_uint8"](images=tf.constant(data["x"]))["probabilities"].numpy()
        out["serve_uint8"] = loaded.serve(tf.constant(data["x"]))["probabilities"].numpy()
        out["bytes"] = loaded.signatures["serving_bytes"](
            image_bytes=tf.constant(list(data["encoded"])))["probabilities"].numpy()
        errors = {{}}
        for name, call in [
            ("rank", lambda: default(images=tf.zeros([{SIZE}, {SIZE}, 3]))),
            ("channels", lambda: default(images=tf.zeros([1, {SIZE}, {SIZE}, 4]))),
            ("dtype", lambda: default(images=tf.zeros([1, {SIZE}, {SIZE}, 3], tf.float64))),
            ("serve_dtype", lambda: loaded.serve(tf.zeros([1, {SIZE}, {SIZE}, 3], tf.int32))),
            ("bytes", lambda: loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"not an image"]))),
            ("bytes_index", lambda: loaded.signatures["serving_bytes"](
                image_bytes=tf.constant([data["encoded"][0], data["encoded"][1], data["encoded"][0][:40],
                                         b"junk", data["encoded"][1]]))),
        ]:
            try:
                call()
                errors[name] = "no error"
            except Exception as e:
                errors[name] = type(e).__name__ + ": " + str(e)
        for name, call in [
            ("empty_default", lambda: default(images=tf.zeros([0, 40, 60, 3]))),
            ("empty_uint8", lambda: loaded.signatures["serving_uint8"](
                images=tf.zeros([0, {SIZE}, {SIZE}, 3], tf.uint8))),
            ("empty_bytes", lambda: loaded.signatures["serving_bytes"](image_bytes=tf.constant([], tf.string))),
        ]:
            try:
                errors[name] = json.dumps({{k: list(v.shape) for k, v in call().items()}}, sort_keys=True)
            except Exception as e:
                errors[name] = type(e).__name__ + ": " + str(e)[:300]
        import efficientnetv2, keras  # Registers our layers: no custom_objects needed.
        model = keras.models.load_model({run["written"]["keras"]!r}, safe_mode=True)
        out["keras"] = np.asarray(model(data["x"].astype("float32")))
        np.savez({outputs!r}, **out)
        print("ERRORS" + json.dumps(errors))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(outputs)
    errors = json.loads(result.stdout.split("ERRORS", 1)[1])
    expected = reference_model(x)
    for key in ("default_probabilities", "uint8", "serve_uint8", "keras"):
        assert np.abs(out[key] - expected).max() <= 1e-5, key
    resized = tf.image.resize(other.astype("float32"), [SIZE, SIZE]).numpy()
    assert np.abs(out["other"] - reference_model(resized)).max() <= 1e-5
    cropped = np.stack([decode.center_crop(tf.constant(e), SIZE).numpy() for e in encoded])
    assert np.abs(out["bytes"] - reference_model(cropped)).max() <= 1e-5
    top = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(out["default_top5_ids"], top)
    names = np.array(["circle", "square", "triangle", "ring", "cross", "horizontal_stripes",
                      "vertical_stripes", "diagonal_stripes", "checkerboard", "dots"])
    np.testing.assert_array_equal(out["default_top5_names"].astype(str), names[top])
    np.testing.assert_allclose(out["default_top5_probabilities"], np.take_along_axis(expected, top, 1),
                               atol=1e-5)
    assert "images must be a batch [batch, height, width, 3]" in errors["rank"] and "48 48 3" in errors["rank"]
    assert "images must be a batch" in errors["channels"] and "1 48 48 4" in errors["channels"]
    assert "float" in errors["dtype"] and "double" in errors["dtype"]
    assert "int32" in errors["serve_dtype"]
    assert "InvalidArgumentError" in errors["bytes"] and "image_bytes[0] cannot be decoded" in errors["bytes"]
    # The first of the bad images (a truncated PNG and junk) is named, and how many there are.
    assert "image_bytes[2] cannot be decoded" in errors["bytes_index"], errors["bytes_index"]
    assert "2 of 5 images in the batch cannot" in errors["bytes_index"]
    empty = {"probabilities": [0, 10], "top5_ids": [0, 5], "top5_names": [0, 5], "top5_probabilities": [0, 5]}
    for name in ("empty_default", "empty_uint8", "empty_bytes"):
        assert errors[name] == json.dumps(empty, sort_keys=True), (name, errors[name])


def test_saved_model_cli_run(run, reference_model, tmp_path):
    pixels = [[[[10.0, 20.0, 30.0], [200.0, 100.0, 50.0]], [[0.0, 255.0, 128.0], [30.0, 60.0, 90.0]]]]
    result = subprocess.run(
        ["saved_model_cli", "run", "--dir", run["written"]["saved_model"], "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_exprs", f"images={pixels}",
         "--outdir", str(tmp_path / "out")],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    resized = tf.image.resize(np.array(pixels, "float32"), [SIZE, SIZE]).numpy()
    assert np.abs(probabilities - reference_model(resized)).max() <= 1e-5


def _tflite(path, images):
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (1, SIZE, SIZE, 3) and inp["dtype"] == np.float32
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype("float32"))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    return np.array(results)


def test_tflite(run, reference_model):
    x = synthetic_images(4, SIZE, SIZE, seed=3).astype("float32")
    expected = reference_model(x)
    float32 = _tflite(run["written"]["tflite_float32"], x)
    assert np.abs(float32 - expected).max() <= 1e-4
    quantized = _tflite(run["written"]["tflite_dynamic_range"], x)
    np.testing.assert_allclose(quantized.sum(axis=1), 1.0, atol=1e-3)
    assert os.path.getsize(run["written"]["tflite_dynamic_range"]) < os.path.getsize(
        run["written"]["tflite_float32"])


def _keras_application_round_trip(variant, tmp_path, size=64, classes=5):
    ours = build_model(variant, num_classes=classes, input_shape=(size, size, 3))
    randomize_weights(ours, seed=2)
    path = str(tmp_path / "keras_applications.weights.h5")
    export.write_keras_application_weights(ours, path, get_variant(variant))
    constructor = getattr(keras.applications, get_variant(variant).keras_application)
    app = constructor(weights=path, classes=classes, input_shape=(size, size, 3))
    x = synthetic_images(2, size, size, seed=4).astype("float32")
    expected = np.asarray(keras.activations.softmax(ours(x, training=False)))
    assert np.abs(np.asarray(app(x, training=False)) - expected).max() <= 1e-4
    assert expected.max(axis=1).min() < 0.99, "randomized weights should not saturate the softmax"


def test_keras_applications_weights_file_b0(tmp_path):
    _keras_application_round_trip("b0", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["s", "b3"])
def test_keras_applications_weights_file_slow(variant, tmp_path):
    _keras_application_round_trip(variant, tmp_path)


def test_keras_applications_skip_reasons():
    config = tiny_config()
    assert "model.blocks" in export.keras_application_skip_reason(config, get_variant("s"))
    plain = tiny_config(**{"model.blocks": "", "model.head_filters": 1280})
    plain.model.blocks = None
    assert export.keras_application_skip_reason(plain, get_variant("s")) == ""
    assert "has no keras.applications counterpart" in export.keras_application_skip_reason(
        plain, get_variant("xl"))


def _manifest(export_dir):
    with open(os.path.join(export_dir, "export.json")) as f:
        return json.load(f)


def _temps(export_dir):
    parent, name = os.path.split(export_dir)
    return [e for e in os.listdir(parent) if e.startswith(f".{name}.")]


def test_export_is_atomic(run, monkeypatch, tmp_path):
    export_dir = str(tmp_path / "export")
    shutil.copytree(run["export_dir"], export_dir)
    before = _manifest(export_dir)
    # A process killed in the middle of an export (after the SavedModel, during TFLite).
    killed = run_python(f"""
        import os, signal
        from efficientnetv2.io import export
        from tests.training_helpers import tiny_config
        export._write_tflite = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        export.export_run(tiny_config(**{RUN!r}), {run["model_dir"]!r}, {export_dir!r})
    """)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _manifest(export_dir) == before and len(_temps(export_dir)) == 1
    # An export that fails with an exception cleans up after itself and keeps the old export.
    def fail(*args):
        raise RuntimeError("converter failed")

    with monkeypatch.context() as m:
        m.setattr(export, "_write_tflite", fail)
        with pytest.raises(RuntimeError, match="converter failed"):
            export.export_run(run["config"], run["model_dir"], export_dir)
    # ... and the next export removed the killed one's temporary folder (its process is gone).
    assert _manifest(export_dir) == before and not _temps(export_dir)
    # A complete export replaces the old one.
    first_epoch = os.path.join(run["model_dir"], "checkpoints", "ckpt-2")
    export.export_run(run["config"], run["model_dir"], export_dir, checkpoint_path=first_epoch)
    assert _manifest(export_dir)["checkpoint"] == first_epoch and not _temps(export_dir)
    assert sorted(os.listdir(export_dir)) == sorted(os.path.basename(p) for p in run["written"].values())


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, dirs, files in os.walk(folder) for name in dirs + files)


def test_export_refuses_folders_it_did_not_write_and_deletes_nothing(run, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    shutil.copytree(run["model_dir"], model_dir)
    config = run["config"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    link = tmp_path / "link"
    os.symlink(run["export_dir"], link)
    previous = tmp_path / "previous"
    shutil.copytree(run["export_dir"], previous)
    (previous / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    monkeypatch.chdir(model_dir)
    refused = {
        model_dir: "is the run folder",
        ".": "is the run folder",
        str(tmp_path): "is a folder containing the run folder",
        os.path.join(model_dir, "checkpoints"): "inside the run's own checkpoints",
        os.path.join(model_dir, "checkpoints", "export"): "inside the run's own checkpoints",
        os.path.join(model_dir, "config.yaml"): "inside the run's own config.yaml",
        str(user): "is not empty and is not an export of this project",
        str(a_file): "exists and is not a folder",
        str(link): "is a symbolic link",
        str(previous): "an earlier export but also holds notes.txt",
    }
    for export_dir, message in refused.items():
        with pytest.raises(ValueError, match=f"export_dir {re.escape(export_dir)} .*{message}"):
            export.export_run(config, model_dir, export_dir)
    assert _tree(tmp_path) == before
    with pytest.raises(ValueError, match="is not empty and is not an export"):
        export.export_model(None, str(user), None)  # Before anything is written.
    # What may be replaced: nothing yet, an empty folder, our export, one of the earlier version.
    empty = tmp_path / "empty"
    empty.mkdir()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "export.json").write_text(json.dumps({"variant": "s", "num_classes": 10, "files": {}}))
    (legacy / "model.keras").write_text("")
    for export_dir in [os.path.join(model_dir, "export"), "export", str(empty), run["export_dir"], str(legacy)]:
        export.check_export_dir(export_dir, model_dir)
    assert _manifest(run["export_dir"])["format"] == export.EXPORT_FORMAT


def test_stale_temps_removed_are_only_ours(tmp_path):
    export_dir = str(tmp_path / "export")
    dead = 2**22 + 12345  # Above Linux's largest pid: no such process.
    ours = tmp_path / f".export.export-tmp-{dead}-0123abcd"
    (ours / "saved_model").mkdir(parents=True)
    ours_old = tmp_path / f".export.export-tmp-{dead}-0123abcd.old"
    ours_old.mkdir()
    (ours_old / "export.json").write_text("{}")
    kept = [f".export.export-tmp-{dead}", f".export.export-tmp-{dead}-0123abcdx", f".export.export-tmp-{dead}-xyz",
            f".other.export-tmp-{dead}-0123abcd"]
    for name in kept:
        (tmp_path / name).mkdir()
    (tmp_path / f".export.export-tmp-{dead}-99999999").mkdir()
    (tmp_path / f".export.export-tmp-{dead}-99999999" / "notes.txt").write_text("mine")
    kept.append(f".export.export-tmp-{dead}-99999999")
    export._remove_stale_temps(export_dir)
    assert not ours.exists() and not ours_old.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_export_falls_back_past_a_damaged_newest_checkpoint(run, tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(run["model_dir"], model_dir)
    newest = os.path.join(model_dir, "checkpoints", "ckpt-4")
    data = tf.io.gfile.glob(newest + ".data-*")[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with caplog.at_level("WARNING"):
        _, info = export.load_inference_model(run["config"], model_dir)
    assert info.checkpoint == os.path.join(model_dir, "checkpoints", "ckpt-2")
    assert newest in caplog.text
    # The checkpoint asked for is not replaced by another: a one-line error naming it.
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(newest)} cannot be restored") as error:
        export.load_inference_model(run["config"], model_dir, checkpoint_path=newest)
    assert "\n" not in str(error.value)


def test_predict_files(run, reference_model, tmp_path):
    pictures = synthetic_images(2, 70, 90, seed=5)
    png, jpeg = str(tmp_path / "a.png"), str(tmp_path / "b.jpg")
    tf.io.write_file(png, tf.io.encode_png(pictures[0]))
    tf.io.write_file(jpeg, tf.io.encode_jpeg(pictures[1], quality=95))
    results = list(export.predict_files(run["config"], run["model_dir"], [png, jpeg]))
    assert [r[0] for r in results] == [png, jpeg] and [r[2] for r in results] == [None, None]
    for path, top5, _ in results:
        expected = reference_model(decode.center_crop(tf.io.read_file(path), SIZE).numpy()[None])[0]
        order = np.argsort(-expected)[:5]
        names = ["circle", "square", "triangle", "ring", "cross", "horizontal_stripes",
                 "vertical_stripes", "diagonal_stripes", "checkerboard", "dots"]
        assert [name for name, _ in top5] == [names[i] for i in order]
        np.testing.assert_allclose([p for _, p in top5], expected[order], atol=1e-5)


def test_predict_bad_files_are_one_line_errors_and_the_others_predicted(run, tmp_path, monkeypatch):
    config = copy.deepcopy(run["config"])
    config.eval.max_image_mb = 1
    good = str(tmp_path / "good.png")
    tf.io.write_file(good, tf.io.encode_png(synthetic_images(1, 50, 50)[0]))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    large = tmp_path / "large.png"
    with open(large, "wb") as f:
        f.truncate(2 * 2**20)  # Sparse: 2 MiB of zeros, over the 1 MiB limit.
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)  # Opening it for reading would block until a writer comes.
    images = [str(corrupt), good, "/dev/zero", str(tmp_path), fifo, str(large), str(tmp_path / "missing.png"),
              good]
    results = list(export.predict_files(config, run["model_dir"], images))
    assert [r[0] for r in results] == images
    expected = {
        0: r"cannot decode image .*corrupt\.jpg",
        2: r"image /dev/zero is not a regular file",
        3: r"image .* is a folder",
        4: r"image .*pipe is not a regular file",
        5: r"image .*large\.png is 2\.0 MiB, more than eval\.max_image_mb = 1",
        6: r"image .*missing\.png not found",
    }
    for i, (path, top5, error) in enumerate(results):
        if i in expected:
            assert top5 is None and re.match(expected[i], error) and "\n" not in error, (i, error)
        else:
            assert error is None and len(top5) == 5, (i, error)
    assert results[1][1] == results[7][1]
    # When no image can be predicted, the model is not restored at all.
    def no_restore(*args, **kwargs):
        raise AssertionError("restored")

    monkeypatch.setattr(export, "load_inference_model", no_restore)
    results = list(export.predict_files(config, run["model_dir"], ["/dev/zero", str(corrupt)]))
    assert [(top5, bool(error)) for _, top5, error in results] == [(None, True), (None, True)]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints"):
        export.export_run(tiny_config(), str(tmp_path), str(tmp_path / "export"))
    with pytest.raises(FileNotFoundError, match="not found"):
        export.export_run(tiny_config(), str(tmp_path), str(tmp_path / "export"),
                          checkpoint_path=str(tmp_path / "ckpt-9"))
    assert not (tmp_path / "export").exists()


def test_checkpoint_of_another_architecture_refused(run, tmp_path):
    """As training: every checkpoint of the run is tried, and the error says why each was not used."""
    other = tiny_config(**{"model.blocks": "r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e4_i8_o24_c1"})
    expected = (r"ckpt-{} \(ValueError: another run's\? The config says EfficientNetV2-S, model.blocks, "
                r"model.head_filters, and the checkpoint does not match model 'efficientnetv2-s': 11 of the "
                r"wrong shape: block2a/expand_conv/kernel: \(3, 3, 8, 16\) in the checkpoint, \(3, 3, 8, 32\) "
                r"in the model")
    with pytest.raises(CheckpointError, match=expected.format(4) + r".*" + expected.format(2)):
        export.export_run(other, run["model_dir"], str(tmp_path / "export"))
    prefix = os.path.join(run["model_dir"], "checkpoints", "ckpt-2")
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(prefix[:-len('ckpt-2')])}"
                                              + expected.format(2).replace(r"\(Value", r"cannot be restored \(Value")):
        export.export_run(other, run["model_dir"], str(tmp_path / "export"), checkpoint_path=prefix)
    assert not (tmp_path / "export").exists()


def test_imagenet_class_names():
    names = export.imagenet_class_names()
    assert len(names) == 1000
    assert names[:3] == ["tench", "goldfish", "great_white_shark"] and names[999] == "toilet_tissue"
    assert names[207] == "golden_retriever" and names[409] == "analog_clock"


def test_imagenet_class_names_match_wordnet_ids():
    """Independent check: TFDS's list of ImageNet WordNet ids in label order, and imagenette's names."""
    classes_tsv = os.path.join(REPO, "..", "shared", "data", "imagenette", "classes.tsv")
    import tensorflow_datasets  # noqa: PLC0415

    synsets = os.path.join(os.path.dirname(tensorflow_datasets.__file__), "datasets", "imagenet2012",
                           "labels.txt")
    if not (os.path.exists(classes_tsv) and os.path.exists(synsets)):
        pytest.skip("needs ../shared/data/imagenette/classes.tsv and TFDS's imagenet2012 labels.txt")
    order = open(synsets).read().split()
    names = export.imagenet_class_names()
    pairs = [line.split("\t") for line in open(classes_tsv).read().strip().split("\n")]
    assert len(pairs) == 10
    for wnid, name in pairs:
        assert names[order.index(wnid)] == name, wnid


@pytest.mark.slow
def test_formats_agree_on_real_images(run):
    """benchmarks/export_agreement.py on imagenette: TFLite float32 equals the SavedModel, and the
    quantized model picks the same class as the float one on nearly every image."""
    data = os.path.join(REPO, "..", "shared", "data", "imagenette")
    if not os.path.isdir(os.path.join(data, "val")):
        pytest.skip("needs ../shared/data/imagenette (real images); absent here")
    from benchmarks.export_agreement import measure  # noqa: PLC0415

    result = measure(run["export_dir"], data, "val", num_images=200)
    print(result)
    assert result["images"] == 200
    assert result["tflite_float32_vs_saved_model_max_abs_diff"] <= 1e-4
    assert result["quantized_vs_float32_top1_agreement"] >= 0.9


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_an_export_removes_its_temporary_folder_and_says_so(tmp_path, monkeypatch, signum):
    export_dir = str(tmp_path / "export")
    seen = []

    def write_then_signalled(model, tmp, info, written, skipped, *formats):
        with open(os.path.join(tmp, "saved_model"), "w") as f:
            f.write("partial")
        seen.append(tmp)
        signal.raise_signal(signum)  # In this thread, as a user's SIGTERM would be handled in the main one.
        raise AssertionError("the signal did not stop the export")

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(export, "_write_export", write_then_signalled)
    with pytest.raises(export.ExportInterrupted) as error:
        export.export_model(None, export_dir, None)
    name = signal.Signals(signum).name
    assert str(error.value) == (f"export to {export_dir} stopped by {name}; removed its temporary folder "
                                f"{seen[0]}; {export_dir} is as it was")
    assert error.value.exit_code == 128 + signum
    assert os.listdir(tmp_path) == []
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
