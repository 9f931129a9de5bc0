"""One export in every runtime it is deployed to: top-1 on real photos, agreement, CPU latency.

Reads an export folder written with ``export.tflite_int8=true`` and ONNX (``python main.py
--mode=export ... --hparams="export.tflite_int8=true"``), takes photos from a class-folder dataset
(``<data_dir>/<split>/<class>/*``, default ``../shared/data/imagenette`` val: an evenly spread fixed
subset, as ``export_agreement.list_images``), center-crops them like evaluation at the export's size
and runs each runtime on the same pixels: the SavedModel (``serving_default``), ``model.onnx`` in
onnxruntime, and the float32, dynamic-range and full-integer TFLite files.

Per runtime: top-1 accuracy, its change from the SavedModel's, top-1 agreement with the SavedModel
(the share of photos on which both pick the same class), the largest |probability difference| from
the SavedModel, the median latency of one image (batch 1) and the throughput at batch 32, each also
as a ratio to the SavedModel's, every runtime on ``--threads`` CPU threads, timed in this process.

    python benchmarks/deploy_runtimes.py --export_dir runs/x/export
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.export_agreement import DEFAULT_DATA, list_images  # noqa: E402
from datasets import decode  # noqa: E402

BATCH = 32


class SavedModelRuntime:
    name = "SavedModel (serving_default)"

    def __init__(self, export_dir, threads):
        del threads  # TensorFlow's thread pools are set once per process, in main().
        self.path = os.path.join(export_dir, "saved_model")
        self.serving = tf.saved_model.load(self.path).signatures["serving_default"]

    def __call__(self, images):
        return self.serving(images=tf.constant(images))["probabilities"].numpy()


class OnnxRuntime:
    name = "ONNX (onnxruntime)"

    def __init__(self, export_dir, threads):
        import onnxruntime  # noqa: PLC0415 an optional dependency

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.path = os.path.join(export_dir, "model.onnx")
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def __call__(self, images):
        return self.session.run(None, {"images": images})[0]


class TFLiteRuntime:
    """A TFLite file, its input resized to the batch; uint8 files quantize and dequantize here."""

    def __init__(self, name, path, threads):
        self.name, self.path, self.threads = name, path, threads
        self.interpreters = {}

    def _interpreter(self, batch):
        if batch not in self.interpreters:
            interpreter = tf.lite.Interpreter(model_path=self.path, num_threads=self.threads)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [batch, *interpreter.get_input_details()[0]["shape"][1:]])
            interpreter.allocate_tensors()
            self.interpreters[batch] = interpreter
        return self.interpreters[batch]

    def __call__(self, images):
        interpreter = self._interpreter(len(images))
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        if inp["dtype"] == np.uint8:
            scale, zero = inp["quantization"]
            images = np.clip(np.round(images / scale + zero), 0, 255).astype(np.uint8)
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        result = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.uint8:
            scale, zero = out["quantization"]
            result = scale * (result.astype(np.float32) - zero)
        return result


def runtimes(export_dir, threads):
    yield SavedModelRuntime(export_dir, threads)
    yield OnnxRuntime(export_dir, threads)
    for name, file in (("TFLite float32", "model_float32.tflite"),
                       ("TFLite dynamic range", "model_dynamic_range.tflite"),
                       ("TFLite full int8 (uint8 in/out)", "model_int8.tflite")):
        yield TFLiteRuntime(name, os.path.join(export_dir, file), threads)


def _bytes(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def predict(runtime, images):
    return np.concatenate([runtime(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])


def interleaved_median_seconds(calls, repeats):
    """Median seconds of each of ``calls``, timed in turns (one call of each per round), so that a
    change in the shared machine's load falls on every runtime alike."""
    for call in calls:
        call()  # Warm-up: first-call allocation and tracing are not what a server pays per request.
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, seconds in zip(calls, times):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
    return [float(np.median(seconds)) for seconds in times]


def measure(export_dir, data_dir=DEFAULT_DATA, split="val", num_images=500, threads=2, repeats=20):
    with open(os.path.join(export_dir, "export.json")) as f:
        manifest = json.load(f)
    size = manifest["image_size"]
    paths, labels = list_images(data_dir, split, num_images)
    images = np.stack([decode.center_crop(tf.io.read_file(p), size).numpy() for p in paths]).astype(np.float32)
    names = open(os.path.join(export_dir, "labels.txt"), encoding="utf-8").read().splitlines()
    truth = np.array([names.index(c) for c in labels])
    one, batch = images[:1], np.resize(images, (BATCH, *images.shape[1:]))
    models = list(runtimes(export_dir, threads))
    latencies = interleaved_median_seconds([lambda r=r: r(one) for r in models], repeats)
    batch_times = interleaved_median_seconds([lambda r=r: r(batch) for r in models], max(3, repeats // 4))
    rows = []
    for runtime, latency, batch_time in zip(models, latencies, batch_times):
        probabilities = predict(runtime, images)
        rows.append({"runtime": runtime.name, "probabilities": probabilities, "bytes": _bytes(runtime.path),
                     "top1": float(np.mean(probabilities.argmax(1) == truth)),
                     "latency_ms": 1000 * latency, "images_per_s": BATCH / batch_time})
    reference = rows[0]
    for row in rows:
        row["top1_change"] = row["top1"] - reference["top1"]
        row["agreement"] = float(np.mean(row["probabilities"].argmax(1) == reference["probabilities"].argmax(1)))
        row["max_abs_diff"] = float(np.abs(row["probabilities"] - reference["probabilities"]).max())
        row["latency_ratio"] = row["latency_ms"] / reference["latency_ms"]
        row["throughput_ratio"] = row["images_per_s"] / reference["images_per_s"]
    return {"images": len(images), "image_size": size, "variant": manifest["variant"],
            "checkpoint": os.path.basename(manifest["checkpoint"]), "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--data_dir", default=DEFAULT_DATA)
    parser.add_argument("--split", default="val")
    parser.add_argument("--num_images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.data_dir, args.split)):
        sys.exit(f"no images: {os.path.join(args.data_dir, args.split)} is not a folder")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rep = report.Report(
        "Deployment runtimes: accuracy, agreement and CPU speed", __file__,
        photos=f"{args.num_images} of the {args.split} split, evenly spread over the sorted file list",
        threads=f"{args.threads} CPU threads per runtime (TF intra-op, onnxruntime intra-op, TFLite)",
        timing=f"latency: median of {args.repeats} batch-1 calls; throughput: batch {BATCH}, "
               f"median of {max(3, args.repeats // 4)} calls; the runtimes timed in turns, one call "
               "each per round, after one untimed warm-up call each")
    result = measure(args.export_dir, args.data_dir, args.split, args.num_images, args.threads, args.repeats)
    rep.note(f"EfficientNetV2-{result['variant'].upper()} ({result['checkpoint']}) at {result['image_size']} px, "
             f"{result['images']} photos; every ratio is against the SavedModel's row of this run.")
    table = rep.table(["runtime", "top-1", "change", "agreement", "max prob. diff", "batch 1 ms", "x SavedModel",
                       "batch 32 img/s", "x SavedModel", "MB"])
    for row in result["rows"]:
        table.add(row["runtime"], f"{row['top1']:.4f}", f"{row['top1_change']:+.4f}", f"{row['agreement']:.4f}",
                  f"{row['max_abs_diff']:.2g}", f"{row['latency_ms']:.2f}", f"{row['latency_ratio']:.2f}",
                  f"{row['images_per_s']:.1f}", f"{row['throughput_ratio']:.2f}", f"{row['bytes'] / 2**20:.1f}")
    rep.print()


if __name__ == "__main__":
    main()
