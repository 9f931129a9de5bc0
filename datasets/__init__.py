"""The input pipeline of EfficientNetV2 training: sources, decoding, augmentation, tf.data.

    src = datasets.get_source("auto", data_dir)       # synthetic when data_dir is None
    train = datasets.build_train_dataset(src, batch_size=64, image_size=128,
                                         randaug_magnitude=5, seed=0, epoch=epoch)
    evaluation = datasets.build_eval_dataset(src, batch_size=64, image_size=384)
    steps = datasets.steps_per_epoch(src, global_batch_size=64)

Determinism.  `build_train_dataset` returns ONE epoch, and everything in it (examples, order,
crops, flips, RandAugment, mixup/CutMix) is a pure function of (seed, epoch) and the input
pipeline id: all randomness is stateless, with no shuffle buffer and no global seed, so a run
resumed at epoch e sees exactly the batches it would have seen.  Undecodable images and damaged
TFRecord shards are skipped, logged and counted (`skipping`), never fatal.

Training images are uint8 (a quarter of float32's bytes to batch and send to the device); with
mixup/CutMix on, the mixing is drawn here and applied to the labels, and the train step applies
it to the images on the device (`mixing.mixed_images`).  Eval images are float32 [0, 255];
normalization belongs to the model.  Labels are float32 one-hot (multi-hot for ImageNet-21k).

Modules: catalog (get_source), source (the Source interface), synthetic, folder, tfrecord,
tfds_source, records (TFRecord formats), ordering (sharding, stateless shuffles), decode (crops),
randaugment, mixing, skipping, pipeline (the builders), service (tf.data service), build_tfrecords
(converter CLI).
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
