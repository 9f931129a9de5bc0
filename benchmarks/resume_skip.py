"""Seconds to the first batch of an epoch resumed at step k: built batches skipped vs records skipped.

A folder of JPEGs (written once into --dir), RandAugment on; the resume at step k of batch B either
skips k built batches (what a checkpoint without ``data_position`` does: every skipped image is read,
decoded and augmented) or starts at (k, k x B) records (``build_train_dataset(start=...)``: the skipped
records are only read), next to the first batch of the epoch itself. Prints them and checks that the two first batches agree bit for bit.

    python -m benchmarks.resume_skip --dir resume_skip_data --images 4096 --step 120
"""

import argparse
import os
import time

import numpy as np
import tensorflow as tf

import datasets
from benchmarks import report


def _write_folder(root, images, size):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for i in range(images):
        path = os.path.join(root, "train", f"class{i % 10}", f"{i:06d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        image[size // 4:size // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        tf.io.write_file(path, tf.io.encode_jpeg(image, quality=90))
    os.makedirs(os.path.join(root, "val", "class0"), exist_ok=True)
    val = os.path.join(root, "val", "class0", "0.jpg")
    if not os.path.exists(val):
        tf.io.write_file(val, tf.io.encode_jpeg(np.zeros((size, size, 3), np.uint8)))


def _first_batch(dataset):
    start = time.perf_counter()
    x, labels = next(iter(dataset))  # x: (uint8 images, mixing plan) with mixup on.
    return time.perf_counter() - start, [t.numpy() for t in tf.nest.flatten(x)], labels.numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--image_px", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--step", type=int, default=120)
    parser.add_argument("--train_px", type=int, default=128)
    args = parser.parse_args(argv)
    rep = report.Report("Resume inside an epoch", __file__, argv, pipeline="RandAugment m=10, mixup 0.2")
    _write_folder(args.dir, args.images, args.image_px)
    src = datasets.get_source("auto", args.dir)
    kwargs = dict(batch_size=args.batch, image_size=args.train_px, randaug_magnitude=10.0, mixup_alpha=0.2,
                  seed=1, epoch=3)
    k = args.step
    fresh, _, _ = _first_batch(datasets.build_train_dataset(src, **kwargs))
    old, old_images, old_labels = _first_batch(datasets.build_train_dataset(src, **kwargs).skip(k))
    new, new_images, new_labels = _first_batch(
        datasets.build_train_dataset(src, start=(k, k * args.batch), **kwargs))
    for old_part, new_part in zip(old_images, new_images, strict=True):
        np.testing.assert_array_equal(old_part, new_part)
    np.testing.assert_array_equal(old_labels, new_labels)
    caption = (f"{src.num_examples('train')} JPEGs of {args.image_px} px, trained at {args.train_px} px, batch "
               f"{args.batch}, resumed at step {k} ({k * args.batch} images skipped); both resumes give the same "
               "first batch bit for bit.")
    table = rep.table(["first batch", "seconds", "vs skipping records"], caption)
    table.add("at the epoch's start", f"{fresh:.2f}", f"{fresh / new:.2f}x")
    table.add(f"at step {k}, skipping built batches", f"{old:.2f}", f"{old / new:.2f}x")
    table.add(f"at step {k}, skipping records before decoding", f"{new:.2f}", "1.00x")
    rep.print()


if __name__ == "__main__":
    main()
