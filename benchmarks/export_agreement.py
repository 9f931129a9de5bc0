"""How far an export's formats agree with each other on real images.

Reads an export folder (``python main.py --mode=export``), takes images from a class-folder dataset
(``<data_dir>/<split>/<class>/*``, default ``../shared/data/imagenette`` val), decodes and
center-crops them like evaluation at the export's image size, and runs the SavedModel
(``serving_default``), the float32 TFLite model and the dynamic-range-quantized TFLite model on them.

It prints: the largest |probability difference| of float32 TFLite vs SavedModel and of quantized vs
float32 TFLite; the top-1 agreement of quantized vs float32 TFLite (the fraction of images on which
both pick the same class); and, when the export's labels are the dataset's class names, the top-1
accuracy of each.

    python benchmarks/export_agreement.py --export_dir runs/x/export
    python benchmarks/export_agreement.py --export_dir runs/x/export --num_images 1000 --split val
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

from datasets import decode  # noqa: E402

DEFAULT_DATA = report.IMAGENETTE


def list_images(data_dir, split, num_images):
    """(paths, class names) of ``num_images`` images spread evenly over the sorted list."""
    root = os.path.join(data_dir, split)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(os.path.join(root, c, f), c) for c in classes for f in sorted(os.listdir(os.path.join(root, c)))]
    step = max(1, len(files) // num_images)
    picked = files[::step][:num_images]
    return [p for p, _ in picked], [c for _, c in picked]


def tflite_probabilities(path, images):
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(results)


def measure(export_dir, data_dir=DEFAULT_DATA, split="val", num_images=500, batch_size=32):
    with open(os.path.join(export_dir, "export.json")) as f:
        manifest = json.load(f)
    size = manifest["image_size"]
    paths, labels = list_images(data_dir, split, num_images)
    images = np.stack([decode.center_crop(tf.io.read_file(p), size).numpy() for p in paths])
    serving = tf.saved_model.load(os.path.join(export_dir, "saved_model")).signatures["serving_default"]
    saved = np.concatenate([
        serving(images=tf.constant(images[i:i + batch_size]))["probabilities"].numpy()
        for i in range(0, len(images), batch_size)
    ])
    start = time.perf_counter()
    float32 = tflite_probabilities(os.path.join(export_dir, "model_float32.tflite"), images)
    float_time = time.perf_counter() - start
    start = time.perf_counter()
    quantized = tflite_probabilities(os.path.join(export_dir, "model_dynamic_range.tflite"), images)
    quantized_time = time.perf_counter() - start
    result = {
        "images": len(images),
        "image_size": size,
        "tflite_float32_vs_saved_model_max_abs_diff": float(np.abs(float32 - saved).max()),
        "quantized_vs_float32_max_abs_diff": float(np.abs(quantized - float32).max()),
        "quantized_vs_float32_top1_agreement": float(np.mean(quantized.argmax(1) == float32.argmax(1))),
        "tflite_float32_ms_per_image": 1000 * float_time / len(images),
        "tflite_quantized_ms_per_image": 1000 * quantized_time / len(images),
        "float32_bytes": os.path.getsize(os.path.join(export_dir, "model_float32.tflite")),
        "quantized_bytes": os.path.getsize(os.path.join(export_dir, "model_dynamic_range.tflite")),
    }
    labels_file = os.path.join(export_dir, "labels.txt")
    if os.path.exists(labels_file):
        names = open(labels_file, encoding="utf-8").read().splitlines()
        if set(labels) <= set(names):
            truth = np.array([names.index(c) for c in labels])
            for key, probabilities in (("saved_model", saved), ("tflite_float32", float32),
                                       ("tflite_quantized", quantized)):
                result[f"top1_accuracy_{key}"] = float(np.mean(probabilities.argmax(1) == truth))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--data_dir", default=DEFAULT_DATA)
    parser.add_argument("--split", default="val")
    parser.add_argument("--num_images", type=int, default=500)
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.data_dir, args.split)):
        sys.exit(f"no images: {os.path.join(args.data_dir, args.split)} is not a folder")
    rep = report.Report("Export agreement", __file__, images=f"{args.num_images} of the {args.split} split")
    table = rep.table(["measure", "value"])
    for key, value in measure(args.export_dir, args.data_dir, args.split, args.num_images).items():
        table.add(key, f"{value:.6g}" if isinstance(value, float) else value)
    rep.print()


if __name__ == "__main__":
    main()
