"""Training input pipeline throughput on real JPEGs (a benchmark, not a test).

    python benchmarks/input_pipeline.py [--tfrecord_dir DIR] [--num_batches 20] [--batch_size 64]

Converts ../shared/data/imagenette to TFRecords with `datasets.build_tfrecords` (into a temporary
folder, or into/from --tfrecord_dir), then times, at each --image_sizes:

- ours, no RandAugment: decode-and-crop + resize + flip, batched (the floor);
- ours, full: the above + our RandAugment (2 ops, m=--magnitude) + mixup (--mixup_alpha), i.e.
  `datasets.build_train_dataset`;
- keras.layers.RandAugment and keras_cv.layers.RandAugment applied to the same decoded, cropped,
  flipped batches (factor / magnitude = m / 30 on their 0-1 scale, 2 ops).

Throughput is images per wall second, and images per CPU-second of this process (user + system
time of all its threads): the per-core figure, fair when the machine is shared.  The first
--warmup_batches of each pipeline are not timed; the Keras baselines, far slower, time
--baseline_batches after one warm-up batch.
"""

import argparse
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import tensorflow as tf  # noqa: E402

import datasets  # noqa: E402
from datasets import build_tfrecords  # noqa: E402

IMAGENETTE = os.path.join(REPO_ROOT, "..", "shared", "data", "imagenette")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def measure(dataset: tf.data.Dataset, num_batches: int, warmup_batches: int):
    """(images, wall seconds, CPU seconds) over num_batches after warmup_batches."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    images = 0
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(num_batches):
        images += int(next(iterator)[0].shape[0])
    return images, time.perf_counter() - wall, _cpu_seconds() - cpu


def cropped_batches(src, batch_size: int, image_size: int) -> tf.data.Dataset:
    """Our decode + crop + flip, no RandAugment, no mixing: the input of the Keras baselines."""
    return datasets.build_train_dataset(src, batch_size=batch_size, image_size=image_size,
                                        randaug_magnitude=0)


def with_layer(dataset: tf.data.Dataset, layer) -> tf.data.Dataset:
    return dataset.map(lambda images, labels: (layer(images, training=True), labels),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pipelines(src, args, image_size: int):
    """(name, dataset, timed batches, warm-up batches) to time at image_size."""
    factor = args.magnitude / 30.0
    ours = (args.num_batches, args.warmup_batches)
    yield ("ours: decode+crop+flip", cropped_batches(src, args.batch_size, image_size), *ours)
    yield (f"ours: + RandAugment(m={args.magnitude:g}) + mixup({args.mixup_alpha:g})",
           datasets.build_train_dataset(src, batch_size=args.batch_size, image_size=image_size,
                                        randaug_magnitude=args.magnitude,
                                        mixup_alpha=args.mixup_alpha), *ours)
    if args.skip_baselines:
        return
    baseline = (args.baseline_batches, 1)
    import keras
    yield (f"keras.layers.RandAugment(factor={factor:.2f})",
           with_layer(cropped_batches(src, args.batch_size, image_size),
                      keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=factor, seed=0)),
           *baseline)
    import keras_cv
    yield (f"keras_cv.layers.RandAugment(magnitude={factor:.2f})",
           with_layer(cropped_batches(src, args.batch_size, image_size),
                      keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2,
                                                  magnitude=factor, seed=0)),
           *baseline)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=IMAGENETTE, help="folder of class sub-folders")
    parser.add_argument("--tfrecord_dir", default=None,
                        help="reuse (or write) the converted shards here; default: a temp folder")
    parser.add_argument("--image_sizes", default="128,300")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--warmup_batches", type=int, default=3)
    parser.add_argument("--baseline_batches", type=int, default=4,
                        help="timed batches of the Keras baselines (after 1 warm-up; they are slow)")
    parser.add_argument("--magnitude", type=float, default=15.0)
    parser.add_argument("--mixup_alpha", type=float, default=0.2)
    parser.add_argument("--skip_baselines", action="store_true",
                        help="time only this package's pipeline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        tfrecord_dir = args.tfrecord_dir or os.path.join(scratch, "tfrecords")
        if not tf.io.gfile.glob(os.path.join(tfrecord_dir, "train-*")):
            if not os.path.isdir(args.images):
                print(f"no images at {args.images}: nothing to benchmark", file=sys.stderr)
                return 1
            start = time.perf_counter()
            counts = build_tfrecords.convert(args.images, tfrecord_dir)
            print(f"converted {counts} from {args.images} in {time.perf_counter() - start:.0f} s")
        src = datasets.get_source("imagenet", tfrecord_dir)

        cores = len(os.sched_getaffinity(0))
        print(f"TensorFlow {tf.__version__}, {cores} CPU cores available to this process "
              f"(tf.data uses its default thread pool: one thread per core), batch "
              f"{args.batch_size}; timed batches after warm-up: ours {args.num_batches} after "
              f"{args.warmup_batches}, Keras baselines {args.baseline_batches} after 1; "
              f"{src.num_examples('train')} imagenette JPEGs (~224x224) in TFRecords")
        header = f"| {'pipeline':52s} | size | images/s | CPU s | images per CPU-s (per core) |"
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for image_size in (int(s) for s in args.image_sizes.split(",")):
            for name, dataset, batches, warmup in pipelines(src, args, image_size):
                images, wall, cpu = measure(dataset, batches, warmup)
                print(f"| {name:52s} | {image_size:4d} | {images / wall:8.0f} | {cpu:5.1f} | "
                      f"{images / cpu:27.0f} |", flush=True)
    print(f"skipped undecodable images: {datasets.skipped_images()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
