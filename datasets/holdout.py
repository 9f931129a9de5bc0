"""A validation set held out of the training records, for data without one (ImageNet-21k).

The paper holds out 100,000 randomly picked ImageNet-21k training images as its validation set. A
record is held out when a keyed hash of its identity, the shard's file name and its place in the
shard (``train-00042-of-01024:517``), falls below ``holdout / total``: the choice is fixed by the
key (``HOLDOUT_KEY``) and the records, the same for every run, worker count and reading order, and
training never reads a held-out record (the two splits are complements). Each record is drawn
independently, so the set holds about ``holdout`` records (binomial: 100,000 +- 316 at one standard
deviation of 13M); the split sizes reported are the expected ones.
"""

import tensorflow as tf

__all__ = ["HOLDOUT_KEY", "is_held_out"]

# The hash key: part of the definition of the split; changing it changes which images are held out.
HOLDOUT_KEY = (2104, 298)
_BUCKETS = 1 << 30


def _record_key(record_id: tf.Tensor) -> tf.Tensor:
    """``/data/train-00001-of-00004:17`` -> ``train-00001-of-00004:17``: where the data lives is not
    part of a record's identity."""
    return tf.strings.regex_replace(record_id, r"^.*/", "")


def is_held_out(record_id: tf.Tensor, fraction: float) -> tf.Tensor:
    """Whether the record ``record_id`` ("<shard path>:<record number>") belongs to the hold-out of
    ``fraction`` of all records."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"hold-out fraction {fraction} must be in [0, 1]")
    bucket = tf.strings.to_hash_bucket_strong(_record_key(record_id), _BUCKETS, list(HOLDOUT_KEY))
    return bucket < int(round(fraction * _BUCKETS))
