"""A TensorFlow Datasets dataset already prepared in a data_dir: `get_source("tfds:cifar10", dir)`.

Never downloads.  Images are read still encoded (`tfds.decode.SkipDecoding`) and go through the
same decoding and cropping as files.  The first `Image` feature is the image, the first
`ClassLabel` the label.  Train is the "train" split; eval is "validation", else "test".
Training order: shards in TFDS's order, shuffled within blocks of `SHUFFLE_BLOCK` examples.
"""

from typing import Optional

import tensorflow as tf

from datasets import ordering
from datasets.source import Source, check_split

EVAL_SPLITS = ("validation", "test")


def _feature_key(features, feature_type, what: str, name: str) -> str:
    for key, feature in features.items():
        if isinstance(feature, feature_type):
            return key
    raise ValueError(f"TFDS dataset {name!r} has no {what} feature; features: {sorted(features)}")


class TfdsSource(Source):
    """TFDS dataset `name` prepared under `data_dir` (TFDS's default dir when None)."""

    def __init__(self, name: str, data_dir: Optional[str] = None,
                 shuffle_block: int = ordering.SHUFFLE_BLOCK):
        import tensorflow_datasets as tfds  # Imported here: slow, and only this source needs it.

        self._tfds = tfds
        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise ValueError(f"unknown TFDS dataset {name!r}: {error}") from None
        if not self._builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {self._builder.data_dir!r}; this package "
                f"never downloads: run `tfds build {name} --data_dir={data_dir or '<dir>'}` where "
                "there is network, then pass that data_dir")
        info = self._builder.info
        self._image_key = _feature_key(info.features, tfds.features.Image, "Image", name)
        self._label_key = _feature_key(info.features, tfds.features.ClassLabel, "ClassLabel", name)
        eval_splits = [s for s in EVAL_SPLITS if s in info.splits]
        if "train" not in info.splits or not eval_splits:
            raise ValueError(f"TFDS dataset {name!r} needs a 'train' split and one of "
                             f"{list(EVAL_SPLITS)}; it has {sorted(info.splits)}")
        self._splits = {"train": "train", "eval": eval_splits[0]}
        label = info.features[self._label_key]
        self.name = f"tfds:{name}"
        self.num_classes = label.num_classes
        self.class_names = list(label.names)
        self.multi_label = False
        self.shuffle_block = shuffle_block

    def num_examples(self, split: str) -> int:
        return self._builder.info.splits[self._splits[check_split(split)]].num_examples

    def examples(self, split: str, *, seed: Optional[tf.Tensor] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 image_size: int = 224) -> tf.data.Dataset:
        tfds_split = self._splits[check_split(split)]
        num_pipelines, _ = ordering.pipelines(input_context)
        by_file = self._builder.info.splits[tfds_split].num_shards >= num_pipelines
        read_config = self._tfds.ReadConfig(try_autocache=False, add_tfds_id=True,
                                            input_context=input_context if by_file else None)
        dataset = self._builder.as_dataset(
            split=tfds_split, shuffle_files=False, read_config=read_config,
            decoders={self._image_key: self._tfds.decode.SkipDecoding()})
        if not by_file:
            dataset = ordering.shard_elements(dataset, input_context)
        dataset = dataset.map(lambda e: {"image": e[self._image_key],
                                         "label": tf.cast(e[self._label_key], tf.int32),
                                         "id": e["tfds_id"]})
        if seed is not None:
            dataset = ordering.block_shuffle(dataset, seed, self.shuffle_block)
        return dataset

    def describe(self) -> str:
        return f"{self.name} in {self._builder.data_dir}: " + super().describe()
