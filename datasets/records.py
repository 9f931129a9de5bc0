"""The TFRecord formats this package reads and writes.

ImageNet ("imagenet"): the format of the reference release and the TPU tooling. Shards are named
`train-00000-of-01024` and `validation-00000-of-00128` in one folder; each record is a
`tf.train.Example` with

| key                 | type          | meaning                                              |
|---------------------|---------------|------------------------------------------------------|
| `image/encoded`     | bytes         | the image file (JPEG; PNG etc. also decode)          |
| `image/class/label` | int64         | class id, **1-based** (0 is ImageNet's "background") |
| `image/class/text`  | bytes, opt.   | class name                                           |
| `image/filename`    | bytes, opt.   | source file name                                     |
| `image/format`, `image/height`, `image/width`, `image/channels`, `image/colorspace`: optional |

Only the first two are read.  An optional `labels.txt` beside the shards lists the class names,
one per line, line i (0-based) naming label i+1.  An optional `num_examples.json`
(`{"train": N, "validation": M}`, written by `datasets.build_tfrecords`) saves counting records.

ImageNet-21k ("imagenet21k"): same shard names, records with

| key                 | type             | meaning                                      |
|---------------------|------------------|----------------------------------------------|
| `image/encoded`     | bytes            | the JPEG                                     |
| `image/id`          | bytes, optional  | an identifier (file name / synset id)        |
| `image/class/label` | VarLen int64     | every class id of the image, **0-based**     |
"""

import json
import os
from typing import Optional, Sequence

import tensorflow as tf

TRAIN_PATTERN = "train-*"
EVAL_PATTERN = "validation-*"
LABELS_FILENAME = "labels.txt"
COUNTS_FILENAME = "num_examples.json"

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
ID_KEY = "image/id"

_IMAGENET_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}
_IMAGENET21K_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_KEY: tf.io.VarLenFeature(tf.int64),
}


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`train-00003-of-00016`: the standard shard file name."""
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def imagenet_example(encoded: bytes, label: int, *, class_name: str = "", filename: str = "",
                     height: int = 0, width: int = 0, channels: int = 3,
                     image_format: str = "JPEG") -> tf.train.Example:
    """One record of the ImageNet format; `label` is 0-based here and stored 1-based."""
    feature = {
        IMAGE_KEY: _bytes(encoded),
        LABEL_KEY: _ints([label + 1]),
        "image/class/text": _bytes(class_name.encode()),
        "image/filename": _bytes(filename.encode()),
        "image/format": _bytes(image_format.encode()),
        "image/colorspace": _bytes(b"RGB" if channels == 3 else b"Grayscale"),
        "image/channels": _ints([channels]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def imagenet21k_example(encoded: bytes, labels: Sequence[int], image_id: str = "") -> tf.train.Example:
    """One record of the ImageNet-21k format; `labels` are 0-based class ids."""
    feature = {IMAGE_KEY: _bytes(encoded), ID_KEY: _bytes(image_id.encode()), LABEL_KEY: _ints(labels)}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _check_labels(labels: tf.Tensor, num_classes: int, record_id: tf.Tensor) -> tf.Tensor:
    in_range = tf.reduce_all((labels >= 0) & (labels < num_classes))
    check = tf.debugging.Assert(
        in_range, [f"label outside [0, {num_classes}) in record", record_id, "labels (0-based):", labels],
        summarize=16)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def parse_imagenet(record: tf.Tensor, record_id: tf.Tensor, num_classes: int) -> dict:
    """Serialized ImageNet record -> {"image": bytes, "label": int32 0-based, "id": record_id}.

    A label outside [0, num_classes) (after subtracting 1) fails with an error naming `record_id`
    (shard file and record number).
    """
    features = tf.io.parse_single_example(record, _IMAGENET_FEATURES)
    label = tf.cast(features[LABEL_KEY], tf.int32) - 1
    return {"image": features[IMAGE_KEY], "label": _check_labels(label, num_classes, record_id),
            "id": record_id}


def parse_imagenet21k(record: tf.Tensor, record_id: tf.Tensor, num_classes: int) -> dict:
    """Serialized ImageNet-21k record -> {"image", "label": int32 [n] 0-based ids, "id"}."""
    features = tf.io.parse_single_example(record, _IMAGENET21K_FEATURES)
    labels = tf.cast(features[LABEL_KEY].values, tf.int32)
    record_id = tf.strings.join([record_id, features[ID_KEY]], separator=" ")
    return {"image": features[IMAGE_KEY], "label": _check_labels(labels, num_classes, record_id),
            "id": record_id}


def read_labels_file(directory: str) -> Optional[list]:
    """Class names from `<directory>/labels.txt`, or None when there is no such file."""
    path = os.path.join(directory, LABELS_FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"labels file {path} is empty; expected one class name per line")
    return names


def write_labels_file(directory: str, class_names: Sequence[str]) -> str:
    path = os.path.join(directory, LABELS_FILENAME)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    return path


def read_counts_file(directory: str) -> Optional[dict]:
    path = os.path.join(directory, COUNTS_FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_counts_file(directory: str, counts: dict) -> str:
    path = os.path.join(directory, COUNTS_FILENAME)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(counts, f)
    return path
