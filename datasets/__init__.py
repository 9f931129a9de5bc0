"""The input pipeline of EfficientNetV2 training: sources, decoding, augmentation, tf.data.

    src = datasets.get_source("auto", data_dir)       # synthetic when data_dir is None
    train = datasets.build_train_dataset(src, batch_size=64, image_size=128,
                                         randaug_magnitude=5, seed=0, epoch=epoch)
    evaluation = datasets.build_eval_dataset(src, batch_size=64, image_size=384)
    steps = datasets.steps_per_epoch(src, global_batch_size=64)
    datasets.skipped_images()                          # undecodable images skipped so far
    datasets.skipped_shards()                          # corrupt TFRecord shards cut short so far

Determinism.  `build_train_dataset` returns ONE epoch, and everything in it (which examples, in
which order, every crop, flip, RandAugment op and sign, mixup/CutMix weight and box) is a pure
function of (seed, epoch) and the input pipeline id: all randomness is stateless
(tf.random.stateless_*, stateless_shuffle, seeds folded from (seed, epoch, stream, pipeline,
example or batch index)); no tf.data shuffle buffer and no global seed is involved.  A run
resumed at epoch e rebuilds epoch e and sees exactly the batches it would have seen.
`build_eval_dataset` is deterministic too.  Undecodable images (corrupt, truncated, empty,
not an image) are skipped, logged and counted (`skipped_images()`), never fatal; skipping one
does not change what the others get.  A corrupt or truncated TFRecord shard is read up to the
damage, the rest of it skipped with a warning naming it, and counted (`skipped_shards()`).

Training images are uint8 (a quarter of float32's bytes to batch on the host and to send to the
device); with mixup/CutMix on, each batch's first element is (images, mix): the mixing is drawn
here and applied to the labels, and the train step applies it to the images on the device
(`mixing.mixed_images`).  Eval images are float32 [0, 255].  Normalization belongs to the model.
Labels are float32 one-hot (multi-hot for ImageNet-21k), soft where mixed.

Modules: catalog (get_source), source (the Source interface), synthetic, folder, tfrecord,
tfds_source, records (TFRecord formats), ordering (sharding, stateless shuffles), decode (crops),
randaugment, mixing, skipping, pipeline (the builders), service (tf.data service: dispatcher,
workers, distribute), build_tfrecords (converter CLI).
"""

import importlib.metadata
import os
import warnings

from datasets.catalog import DATASETS, detect, get_source
from datasets.folder import FolderSource
from datasets.pipeline import build_eval_dataset, build_train_dataset, steps_per_epoch
from datasets.skipping import skipped_images, skipped_shards
from datasets.source import Source
from datasets.synthetic import SyntheticSource
from datasets.tfrecord import TFRecordSource

__all__ = [
    "EFFICIENTNETV2_INPUT_PIPELINE", "check_name_clash", "DATASETS", "FolderSource", "Source",
    "SyntheticSource", "TFRecordSource",
    "build_eval_dataset", "build_train_dataset", "detect", "get_source", "skipped_images",
    "skipped_shards", "steps_per_epoch",
]



def __getattr__(name):
    # ``datasets.service`` on first use (the trainer's ``datasets.service.distribute``): imported
    # eagerly here, ``python -m datasets.service`` would find it loaded already and warn.
    if name == "service":
        import importlib  # noqa: PLC0415

        return importlib.import_module("datasets.service")
    raise AttributeError(f"module 'datasets' has no attribute {name!r}")


# Tells this package from Hugging Face's ``datasets`` (see efficientnetv2/io/input_pipeline.py).
EFFICIENTNETV2_INPUT_PIPELINE = True


def check_name_clash(distribution=importlib.metadata.distribution):
    """Warns when Hugging Face's ``datasets`` is installed here too: this package shadows it, or it
    this one, depending on ``sys.path``. Returns the warning's text, or None."""
    try:
        other = distribution("datasets")
    except importlib.metadata.PackageNotFoundError:
        return None
    message = (
        f"this environment has Hugging Face's 'datasets' {other.version} installed, and EfficientNetV2's "
        f"input pipeline is a top-level package 'datasets' too (here: {os.path.dirname(__file__)}); one "
        "shadows the other. Install efficientnetv2-keras in a virtual environment of its own."
    )
    warnings.warn(message, UserWarning, stacklevel=2)
    return message


check_name_clash()
