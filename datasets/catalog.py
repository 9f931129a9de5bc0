"""Dataset names -> sources, and detection of what a data_dir holds."""

import os
from typing import Optional

import tensorflow as tf

from datasets import folder, records, tfrecord
from datasets.source import Source
from datasets.synthetic import SyntheticSource

DATASETS = ("auto", "synthetic", "folder", "imagenet", "imagenet21k", "tfds:<name>")


def detect(data_dir: str) -> str:
    """"imagenet" when data_dir has TFRecord shards train-*, "folder" when it has class
    sub-folders (or train/); otherwise an error saying what was looked for."""
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} does not exist (or is not a folder)")
    if tfrecord.find_shards(data_dir, records.TRAIN_PATTERN):
        return "imagenet"
    if any(not name.startswith(".") and tf.io.gfile.isdir(os.path.join(data_dir, name))
           for name in folder.listdir(data_dir)):
        return "folder"
    raise ValueError(
        f"cannot tell what {data_dir!r} holds: it has no TFRecord shards "
        f"{os.path.join(data_dir, records.TRAIN_PATTERN)!r} and no class sub-folders "
        f"(<class>/*{'|'.join(folder.IMAGE_EXTENSIONS)}, optionally under train/ and val/)")


def get_source(dataset: str = "auto", data_dir: Optional[str] = None, *,
               num_classes: Optional[int] = None,
               synthetic_train_examples: int = 10_000,
               synthetic_eval_examples: int = 1_000,
               count_cache_dir: Optional[str] = None, holdout: int = 0) -> Source:
    """The data source `dataset` (one of DATASETS) reading `data_dir`.

    "auto": synthetic when data_dir is None, else what `detect(data_dir)` finds.
    "imagenet"/"imagenet21k": TFRecord shards (see `datasets.records`); `num_classes` overrides
    1000/21843 when the folder has no labels.txt.  "tfds:<name>": a TFDS dataset prepared in
    data_dir.  Everything is checked here, before any model work: a missing or empty folder,
    shards that are not there, an unknown name all raise FileNotFoundError or ValueError.
    `count_cache_dir`: where TFRecord record counts are cached (the run folder), see
    `TFRecordSource.num_examples`.  `holdout` > 0 (TFRecord sources only): the eval split is that
    many training records held out (`datasets.holdout`) instead of the validation shards.
    """
    if dataset == "auto":
        dataset = "synthetic" if data_dir is None else detect(data_dir)
    if holdout and dataset not in ("imagenet", "imagenet21k"):
        raise ValueError(f"data.holdout_examples={holdout} applies to TFRecord datasets (imagenet, "
                         f"imagenet21k), not {dataset!r}, which has its own eval split")
    if dataset == "synthetic":
        if data_dir is not None:
            raise ValueError(f"dataset 'synthetic' reads no files, but data_dir={data_dir!r} was "
                             "given; drop one of them (or use dataset='auto')")
        return SyntheticSource(synthetic_train_examples, synthetic_eval_examples)
    if dataset.startswith("tfds:") and len(dataset) > len("tfds:"):
        from datasets.tfds_source import TfdsSource  # Imports tensorflow_datasets.
        return TfdsSource(dataset[len("tfds:"):], data_dir)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} needs data_dir (the folder holding it)")
    if dataset == "folder":
        return folder.FolderSource(data_dir)
    return tfrecord.TFRecordSource(data_dir, multi_label=dataset == "imagenet21k",
                                   num_classes=num_classes, count_cache_dir=count_cache_dir,
                                   holdout=holdout)
