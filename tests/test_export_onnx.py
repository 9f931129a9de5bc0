"""ONNX and full-integer TFLite exports (efficientnetv2/io/onnx_export.py, tflite_int8.py).

The reference is the SavedModel's ``serving_default`` (what the exporter has always written and the
other tests check against the Keras model), fed the same photos; ONNX runs in onnxruntime.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from datasets import decode
from efficientnetv2 import build_model
from efficientnetv2.io import export, onnx_export, tflite_int8
from efficientnetv2.variants import VARIANTS, get_variant
from tests.datasets_helpers import IMAGENETTE
from tests.training_helpers import tiny_config
from tests.weights_randomizer import randomize_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ort = pytest.importorskip("onnxruntime", reason='needs the "onnx" extra')
pytest.importorskip("tf2onnx", reason='needs the "onnx" extra')


def photos(size, count=6):
    """``count`` imagenette validation photos, center-cropped like evaluation; synthetic when absent."""
    root = os.path.join(IMAGENETTE, "val")
    if not os.path.isdir(root):
        rng = np.random.default_rng(0)
        return rng.uniform(0, 255, (count, size, size, 3)).astype("float32")
    classes = sorted(os.listdir(root))
    paths = [os.path.join(root, c, sorted(os.listdir(os.path.join(root, c)))[0]) for c in classes][:count]
    return np.stack([decode.center_crop(tf.io.read_file(p), size).numpy() for p in paths])


def inference_model(variant, size, classes=10, seed=0):
    logits = build_model(variant, num_classes=classes, input_shape=(size, size, 3), dropout_rate=0.0)
    randomize_weights(logits, seed)
    return keras.Model(logits.input, keras.layers.Softmax(dtype="float32")(logits.output))


def saved_model_probabilities(model, size, images, folder):
    path = os.path.join(folder, "saved_model")
    export._write_saved_model(model, path, size, None)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    return serving(images=tf.constant(images))["probabilities"].numpy()


def check_onnx_against_saved_model(variant, size, tmp_path):
    model = inference_model(variant, size)
    images = photos(size)
    expected = saved_model_probabilities(model, size, images, str(tmp_path))
    path = str(tmp_path / "model.onnx")
    peak = onnx_export.write_onnx(model, path, size)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:], out.name) == ("images", "tensor(float)", [size, size, 3],
                                                            "probabilities")
    assert isinstance(inp.shape[0], str)  # A named, dynamic batch dimension.
    batched = session.run(None, {"images": images})[0]
    one = session.run(None, {"images": images[:1]})[0]
    # The photos get different probabilities (by far more than the tolerance): the image matters.
    assert np.ptp(expected, axis=0).max() > 1e-4
    rtol = onnx_tolerance(np.asarray(model(images, training=False)), expected)
    np.testing.assert_allclose(batched, expected, rtol=rtol, atol=1e-4 * rtol)
    np.testing.assert_allclose(one, expected[:1], rtol=rtol, atol=1e-4 * rtol)
    return peak, model.count_params()


def onnx_tolerance(keras_probabilities, saved_model_probabilities):
    """1e-5 relative, or 3x what TensorFlow's own two float32 executions of the model (the Keras
    model eagerly, its SavedModel's graph) differ by where that is more.

    The weights are random and large (``randomize_weights``): the logits of L and XL spread over
    tens of units, and the rounding of any two float32 kernels grows through 80 blocks to more than
    1e-5 of a probability, TensorFlow against itself included. A wrong conversion differs by orders
    of magnitude more."""
    meaningful = saved_model_probabilities >= 1e-4
    own = np.abs(keras_probabilities - saved_model_probabilities)[meaningful] / saved_model_probabilities[meaningful]
    return max(1e-5, 3 * float(own.max()))


@pytest.mark.parametrize("variant", ["b0", "s"])
def test_onnx_matches_saved_model_on_photos(variant, tmp_path):
    check_onnx_against_saved_model(variant, 32, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_onnx_matches_saved_model_at_224_slow(variant, tmp_path):
    # A process per variant: what a loaded SavedModel leaves in TensorFlow's function library stays
    # until the process ends, and eight full-size variants add up to more than a machine.
    code = ("import json, pathlib; from tests.test_export_onnx import check_onnx_against_saved_model; "
            f"print(json.dumps(check_onnx_against_saved_model({variant!r}, 224, pathlib.Path({str(tmp_path)!r}))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    peak, params = json.loads(result.stdout.strip().splitlines()[-1])
    # The conversion stays within the memory docs/export.md states and the early refusal assumes.
    assert peak < 1.1 * onnx_export.estimated_peak_bytes(params), (peak / 2**30, params)


class Bucketized(keras.layers.Layer):
    """Adds a bucket index to the image: TFLite has Bucketize, tf2onnx has no conversion for it."""

    def call(self, x):
        buckets = tf.raw_ops.Bucketize(input=x, boundaries=[64.0, 128.0, 192.0])
        return x + tf.cast(buckets, x.dtype)


def tiny_info(size, classes=2):
    spec = get_variant("b0")
    return export.InferenceInfo(variant=spec, num_classes=classes, class_names=None, image_size=size,
                                keras_application_skip="a test model")


def test_an_op_the_converter_cannot_handle_is_one_line_and_the_other_formats_are_written(tmp_path):
    size = 16
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3)(Bucketized()(inputs))
    outputs = keras.layers.Softmax()(keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    model = keras.Model(inputs, outputs)
    export_dir = str(tmp_path / "export")
    with pytest.raises(onnx_export.OnnxExportError) as error:
        export.export_model(model, export_dir, tiny_info(size), onnx="true")
    message = str(error.value)
    assert "\n" not in message and "cannot handle op Bucketize" in message
    manifest = json.load(open(os.path.join(export_dir, "export.json")))
    assert manifest["skipped"]["onnx"] == message
    assert set(manifest["files"]) == {"saved_model", "keras", "tflite_float32", "tflite_dynamic_range"}
    assert sorted(os.listdir(export_dir)) == sorted([*manifest["files"].values(), "export.json"])
    assert os.listdir(tmp_path) == ["export"]  # No temporary folder left.


def test_a_missing_converter_is_skipped_with_auto_and_fails_with_true(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(onnx_export, "available", lambda: False)
    model = inference_model("b0", 32, classes=2)
    assert onnx_export.write_as_configured(model, str(tmp_path / "a.onnx"), 32, "auto") == \
        onnx_export.missing_message()
    assert 'pip install -e ".[onnx]"' in caplog.text
    assert onnx_export.write_as_configured(model, str(tmp_path / "b.onnx"), 32, "false") == "export.onnx=false"
    with pytest.raises(onnx_export.OnnxExportError, match=r'pip install -e "\.\[onnx\]"'):
        onnx_export.write_as_configured(model, str(tmp_path / "c.onnx"), 32, "true")
    assert os.listdir(tmp_path) == []


def tiny_model(size=16):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    return keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))))


class KillConversions:
    """SIGKILLs every ONNX conversion child of this process as it appears, as the kernel's
    out-of-memory killer would (Linux: children found through /proc)."""

    def __init__(self):
        self.killed, self._stop = set(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                        parent = int(f.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        command = f.read()
                except (OSError, ValueError, IndexError):
                    continue
                if parent == os.getpid() and b"efficientnetv2.io.onnx_export" in command:
                    os.kill(int(entry), signal.SIGKILL)
                    self.killed.add(entry)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the conversion's process through /proc")
@pytest.mark.parametrize("mode", ["auto", "true"])
def test_a_conversion_killed_for_memory_is_one_line_and_the_other_formats_are_written(mode, tmp_path, caplog):
    export_dir = str(tmp_path / "export")
    line = ("ONNX conversion of EfficientNetV2-B0 ran out of memory (killed); the other formats are "
            "written; rerun with more memory or export.onnx=false")
    with KillConversions() as killer:
        if mode == "true":
            with pytest.raises(onnx_export.OnnxOutOfMemory) as error:
                export.export_model(tiny_model(), export_dir, tiny_info(16), onnx=mode)
            assert str(error.value) == line
        else:
            export.export_model(tiny_model(), export_dir, tiny_info(16), onnx=mode)
            assert line in caplog.text
    assert len(killer.killed) == 1
    manifest = json.load(open(os.path.join(export_dir, "export.json")))
    assert manifest["skipped"]["onnx"] == line
    assert set(manifest["files"]) == {"saved_model", "keras", "tflite_float32", "tflite_dynamic_range"}
    assert sorted(os.listdir(export_dir)) == sorted([*manifest["files"].values(), "export.json"])
    assert os.listdir(tmp_path) == ["export"]  # No temporary folder left.


def test_clearly_too_little_memory_refuses_before_converting(tmp_path, monkeypatch, caplog):
    model = tiny_model()
    needed = onnx_export.estimated_peak_bytes(model.count_params())
    monkeypatch.setattr(onnx_export, "_memory_available", lambda: int(0.5 * needed))
    monkeypatch.setattr(onnx_export.subprocess, "Popen", None)  # Not started: calling it would fail.
    skipped = onnx_export.write_as_configured(model, str(tmp_path / "a.onnx"), 16, "auto", "EfficientNetV2-S")
    assert skipped.startswith(f"ONNX conversion of EfficientNetV2-S needs about {needed / 2**30:.1f} GiB")
    assert skipped.endswith("rerun with more memory or export.onnx=false") and skipped in caplog.text
    with pytest.raises(onnx_export.OnnxOutOfMemory, match="is available .not started."):
        onnx_export.write_as_configured(model, str(tmp_path / "b.onnx"), 16, "true", "EfficientNetV2-S")
    assert os.listdir(tmp_path) == []


def test_the_estimate_fits_the_measured_peaks_in_the_docs():
    # docs/export.md's table: (parameters, measured peak GiB) of the conversion's process at 224 px.
    table = open(os.path.join(REPO, "docs", "export.md"), encoding="utf-8").read()
    rows = re.findall(r"^\| (B0|B1|B2|B3|S|M|L|XL) \| ([\d.]+)M \| ([\d.]+) GiB \|", table, re.M)
    assert len(rows) == 8, rows
    for name, params, peak in rows:
        estimate = onnx_export.estimated_peak_bytes(float(params) * 1e6) / 2**30
        assert 0.8 * estimate < float(peak) < 1.05 * estimate, (name, peak, estimate)


def rss_bytes():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def copies_kept_by_update_proto(updates=16):
    """How many copies of a constant's tensor tf2onnx's ``Node.update_proto`` leaves behind in
    ``updates`` calls, by this process's resident memory (a lower bound: memory that earlier tests
    freed and the allocator kept can hold some copies without growing it)."""
    from tf2onnx.graph import Graph  # noqa: PLC0415

    size = 16 * 2**20
    node = Graph([], opset=onnx_export.OPSET).make_const("weights", np.ones(size // 4, np.float32))
    node.update_proto()
    onnx_export._return_freed_memory()  # noqa: SLF001 so that freed memory is not reused unseen
    before = rss_bytes()
    for _ in range(updates):
        node.update_proto()
    return (rss_bytes() - before) / size


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from /proc")
def test_canary_tf2onnx_update_proto_keeps_a_copy_of_every_constant_per_call():
    """The upb growth that ``onnx_export._tf2onnx_without_copies`` works around. When this fails
    outside the workaround, a tf2onnx or protobuf release has fixed it and the workaround can go."""
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    if api_implementation.Type() != "upb":
        pytest.skip("the growth is protobuf's upb backend's")
    assert copies_kept_by_update_proto() > 8  # of 16
    with onnx_export._tf2onnx_without_copies():
        assert copies_kept_by_update_proto() < 4  # at most a few in flight, not one per update


def test_the_child_exit_becomes_one_line():
    result = onnx_export._result
    assert result(0, 'log\n{"peak_rss": 5}\n', "", "X") == 5
    with pytest.raises(onnx_export.OnnxOutOfMemory, match=r"^ONNX conversion of X ran out of memory \(killed\);"):
        result(-signal.SIGKILL, "", "", "X")
    with pytest.raises(onnx_export.OnnxOutOfMemory, match=r"^ONNX conversion of X ran out of memory;"):
        result(1, '{"out_of_memory": true}\n', "", "X")
    with pytest.raises(onnx_export.OnnxExportError, match=r"^cannot handle op Foo$"):
        result(1, '{"error": "cannot handle op Foo"}\n', "", "X")
    with pytest.raises(onnx_export.OnnxExportError,
                       match=r"^ONNX conversion of X failed in its process \(exit status 1\): ValueError: bad$"):
        result(1, "", "Traceback (most recent call last):\n  ...\nValueError: bad\n", "X")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A tiny run trained for 2 steps and exported with every format."""
    from efficientnetv2.train import training  # noqa: PLC0415 the run to export

    folder = tmp_path_factory.mktemp("int8")
    config = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 2, "progressive.num_stages": 1,
                            "export.tflite_int8": "true", "export.calibration_images": 16,
                            "export.onnx": "true"})
    model_dir = str(folder / "run")
    training.train(config, model_dir, verbose=0)
    return config, export.export_run(config, model_dir, str(folder / "export")), folder


def test_export_run_writes_a_full_integer_tflite_calibrated_on_training_images(int8_run):
    config, written, _ = int8_run
    size = config.eval.image_size
    interpreter = tf.lite.Interpreter(model_path=written["tflite_int8"])
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and tuple(inp["shape"]) == (1, size, size, 3)
    assert out["dtype"] == np.uint8
    # Every op runs on integers: no float tensor but the constants' dequantized copies.
    float_ops = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert not float_ops, float_ops[:5]
    calibration = tflite_int8.calibration_images(config, size, 16)
    assert calibration.shape == (16, size, size, 3) and calibration.dtype == np.float32
    # The int8 model's probabilities follow the float model's on the calibration images.
    float_interpreter = tf.lite.Interpreter(model_path=written["tflite_float32"])
    float_interpreter.allocate_tensors()
    scale, zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    errors = []
    for image in calibration[:8]:
        q = np.clip(np.round(image / scale + zero), 0, 255).astype(np.uint8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        int8 = out_scale * (interpreter.get_tensor(out["index"])[0].astype(np.float32) - out_zero)
        float_interpreter.set_tensor(float_interpreter.get_input_details()[0]["index"], image[None])
        float_interpreter.invoke()
        errors.append(np.abs(int8 - float_interpreter.get_tensor(
            float_interpreter.get_output_details()[0]["index"])[0]).max())
    assert max(errors) < 0.1, errors


def test_deploy_runtimes_benchmark_runs_every_runtime_on_the_same_photos(int8_run):
    from benchmarks import deploy_runtimes  # noqa: PLC0415

    config, written, folder = int8_run
    names = open(written["labels"]).read().split()
    rng = np.random.default_rng(0)
    for name in names[:2]:  # A class-folder split of a few photos named as the run's classes.
        os.makedirs(folder / "data" / "val" / name)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            tf.io.write_file(str(folder / "data" / "val" / name / f"{i}.png"), tf.io.encode_png(pixels))
    result = deploy_runtimes.measure(os.path.dirname(written["manifest"]), str(folder / "data"), "val",
                                     num_images=6, threads=1, repeats=2)
    rows = {row["runtime"]: row for row in result["rows"]}
    assert result["images"] == 6 and len(rows) == 5
    saved, onnx = rows["SavedModel (serving_default)"], rows["ONNX (onnxruntime)"]
    assert saved["agreement"] == 1 and saved["max_abs_diff"] == 0 and saved["latency_ratio"] == 1
    assert onnx["agreement"] == 1 and onnx["max_abs_diff"] < 1e-5
    assert rows["TFLite full int8 (uint8 in/out)"]["max_abs_diff"] < 0.1
    assert all(row["latency_ms"] > 0 and row["images_per_s"] > 0 for row in rows.values())
