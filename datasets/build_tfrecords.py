"""Convert a folder of class sub-folders to ImageNet-format TFRecord shards.

    python -m datasets.build_tfrecords --src <folder> --out <dir> [--shards N]

Reads the folder as `datasets.folder` does (train/ and val/ or validation/, else a hold-out of
every 10th file per class) and writes `train-00000-of-0000N`, `validation-00000-of-0000M`,
`labels.txt` (class names, line i = label i+1 in the records) and `num_examples.json` into
--out.  Train examples are shuffled (by --seed) before sharding, so every shard mixes classes.
JPEGs are stored as they are (grayscale ones too); PNGs and CMYK JPEGs are re-encoded as RGB
JPEG (quality 95).  Every image is decoded once to check it: undecodable files are reported and
left out.

Nothing is overwritten: an --out that already holds shards, labels.txt or num_examples.json (or
is a file) is refused before any work, naming what is there; so is an --out inside --src, equal
to it or holding it (the records would land among the photos and be read as a class folder).  Errors (that, a missing --src, a
folder too small for the hold-out) are one line on stderr and exit status 1.
"""

import argparse
import math
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from datasets import decode, folder, records, skipping

_JPEG_QUALITY = 95


def _checked_image(path: tf.Tensor, label: tf.Tensor, position: tf.Tensor):
    """Read and decode one file; returns the bytes to store (JPEG), its size and channels."""
    data = tf.io.read_file(path)
    image = decode.decode_rgb(data)  # Fails on undecodable files: those are skipped.
    is_jpeg = tf.io.is_jpeg(data)
    channels = tf.cond(is_jpeg, lambda: tf.io.extract_jpeg_shape(data)[2], lambda: tf.constant(3))
    keep = is_jpeg & (channels != 4)
    encoded = tf.cond(keep, lambda: data, lambda: tf.io.encode_jpeg(image, quality=_JPEG_QUALITY))
    stored_channels = tf.where(keep, channels, 3)
    shape = tf.shape(image)
    return encoded, label, path, shape[0], shape[1], stored_channels, position


def write_split(split: str, paths: Sequence[str], labels: Sequence[int], class_names: List[str],
                out_dir: str, num_shards: int) -> int:
    """Write `paths` (in this order) to `num_shards` shards of `split`; returns examples written."""
    total = len(paths)
    rows = tf.data.Dataset.from_tensor_slices(
        (list(paths), np.asarray(labels, np.int32), np.arange(total, dtype=np.int64)))
    checked = skipping.map_skipping_errors(rows, _checked_image, lambda path, label, position: path)
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, records.shard_name(split, i, num_shards)))
               for i in range(num_shards)]
    written = 0
    try:
        for encoded, label, path, height, width, channels, position in checked.as_numpy_iterator():
            example = records.imagenet_example(
                encoded, int(label), class_name=class_names[label],
                filename=os.path.basename(path.decode()), height=int(height), width=int(width),
                channels=int(channels))
            writers[position * num_shards // total].write(example.SerializeToString())
            written += 1
    finally:
        for writer in writers:
            writer.close()
    return written


def check_out(out: str) -> None:
    """Raise FileExistsError when `out` is a file or holds shards, labels.txt or num_examples.json."""
    if not tf.io.gfile.exists(out):
        return
    if not tf.io.gfile.isdir(out):
        raise FileExistsError(f"--out {out!r} is a file, not a folder; choose a new or empty folder")
    patterns = (records.TRAIN_PATTERN, records.EVAL_PATTERN, records.LABELS_FILENAME,
                records.COUNTS_FILENAME)
    existing = sorted(os.path.basename(path) for pattern in patterns
                      for path in tf.io.gfile.glob(os.path.join(out, pattern)))
    if existing:
        listed = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        raise FileExistsError(f"--out {out!r} already holds {listed}; nothing was written. Choose "
                              "a new or empty folder (this tool never overwrites files)")


def check_apart(src: str, out: str) -> None:
    """Raise ValueError when `out` is `src`, inside it or holds it (real paths: links resolved)."""
    if "://" in src or "://" in out:
        return
    real_src, real_out = os.path.realpath(src), os.path.realpath(out)
    if os.path.commonpath([real_src, real_out]) in (real_src, real_out):
        where = ("is" if real_src == real_out else "is inside" if real_out.startswith(real_src + os.sep)
                 else "holds")
        raise ValueError(f"--out {out!r} {where} --src {src!r}; nothing was written. Choose a folder "
                         "outside the photo folder (records inside it would be read as a class folder)")


def _default_shards(count: int) -> int:
    return max(1, math.ceil(count / 1024))


def convert(src: str, out: str, shards: Optional[int] = None,
            validation_shards: Optional[int] = None, seed: int = 0) -> dict:
    """Convert folder `src` into shards in `out`; returns {"train": n, "validation": m}.

    Raises FileExistsError when `out` is a file or holds files this would write (see
    `check_out`), and ValueError when `out` and `src` nest (`check_apart`), before reading `src`.
    """
    for name, value in (("shards", shards), ("validation_shards", validation_shards)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    check_apart(src, out)
    check_out(out)
    source = folder.FolderSource(src)
    tf.io.gfile.makedirs(out)
    train_paths, train_labels = source.files("train")
    eval_paths, eval_labels = source.files("eval")
    order = np.random.default_rng(seed).permutation(len(train_paths))
    counts = {}
    for split, paths, labels, num_shards in (
            ("train", [train_paths[i] for i in order], [train_labels[i] for i in order],
             shards or _default_shards(len(train_paths))),
            ("validation", eval_paths, eval_labels, validation_shards or _default_shards(len(eval_paths)))):
        counts[split] = write_split(split, paths, labels, source.class_names, out, num_shards)
    records.write_labels_file(out, source.class_names)
    records.write_counts_file(out, counts)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.build_tfrecords", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="folder of class sub-folders")
    parser.add_argument("--out", required=True, help="output folder (created; must hold no shards)")
    parser.add_argument("--shards", type=int, default=None,
                        help="train shards (default: one per 1024 images)")
    parser.add_argument("--validation_shards", type=int, default=None,
                        help="validation shards (default: one per 1024 images)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train shuffle")
    args = parser.parse_args(argv)
    skipped_before = skipping.skipped_images()
    try:
        counts = convert(args.src, args.out, args.shards, args.validation_shards, args.seed)
    except (ValueError, OSError, tf.errors.OpError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        print(f"{parser.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 1
    print(f"wrote {counts['train']} train and {counts['validation']} validation examples to "
          f"{args.out}; skipped {skipping.skipped_images() - skipped_before} undecodable files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
