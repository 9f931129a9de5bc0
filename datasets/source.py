"""What every data source provides to the pipeline: metadata and an epoch's examples in order."""

import abc
from typing import List, Optional

import tensorflow as tf

SPLITS = ("train", "eval")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return split


class Source(abc.ABC):
    """A dataset: its classes, its sizes, and its examples for one split.

    Attributes: `name`, `num_classes`, `class_names` (list of str, or None when unknown),
    `multi_label` (True when an image can have several labels: targets are multi-hot).
    """

    name: str
    num_classes: int
    class_names: Optional[List[str]]
    multi_label: bool = False

    @abc.abstractmethod
    def num_examples(self, split: str) -> int:
        """Examples in "train" or "eval" (undecodable images included)."""

    @abc.abstractmethod
    def examples(self, split: str, *, seed: Optional[tf.Tensor] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 image_size: int = 224) -> tf.data.Dataset:
        """This input pipeline's examples of `split`, in an order fixed by `seed`.

        seed None: a fixed unshuffled order.  Elements are dicts: "image" (encoded bytes, or a
        decoded uint8 [H, W, 3] where the source renders at `image_size`), "label" (int32 class
        id; for multi-label sources an int32 vector of ids), "id" (string naming the file or
        shard and record, for error messages and logs).
        """

    def describe(self) -> str:
        """One line for the log: what the data is and where it comes from."""
        return (f"{self.name}: {self.num_classes} classes, {self.num_examples('train')} train / "
                f"{self.num_examples('eval')} eval examples")
