"""Skip examples whose image cannot be decoded, and TFRecord shards that are corrupt; count both.

tf.data has no try/except: `Dataset.ignore_errors()` drops failing elements silently.  Here each
element is processed inside its own one-element dataset; a failure leaves it empty and a
placeholder marked "failed" takes its place.  Failed elements are counted (and the first ones
logged by id) in this process, then filtered out.  The extra per-element dataset costs some tens
of microseconds, small next to decoding an image.

Only errors raised by `fn` are skipped; errors upstream (a label out of range) still stop the
pipeline.  A corrupt or truncated TFRecord shard is read up to the damage; `datasets.tfrecord`
reports it here (`record_skipped_shard`), and `skipped_shards()` counts it.
"""

import threading
from typing import Callable

import tensorflow as tf
from absl import logging

_MAX_LOGGED = 100

_lock = threading.Lock()
_skipped = 0
_skipped_shards = 0


def skipped_images() -> int:
    """How many images this process skipped as undecodable so far (all pipelines, all epochs).

    Read it before and after an epoch for that epoch's count.  Elements in flight count once
    they reach the point where they are dropped.
    """
    return _skipped


def skipped_shards() -> int:
    """How many TFRecord shard reads this process cut short at damage so far (all pipelines, all
    epochs; a damaged shard counts once per pass over it, like an undecodable image)."""
    return _skipped_shards


def record_skipped_shard(shard: str, records_read: int, bytes_read: int, size: int) -> None:
    """Count one shard read cut short and log which shard and how much of it was read.

    `size` is the shard's size in bytes when it was opened, -1 when it could not be opened.
    """
    global _skipped_shards
    with _lock:
        _skipped_shards += 1
        count = _skipped_shards
    if size < 0:
        what = "could not be opened; skipped it"
    else:
        what = (f"is corrupt or truncated: read {records_read} records ({bytes_read} of {size} "
                "bytes), skipped the rest of it")
    logging.warning("TFRecord shard %s %s (%d shard(s) cut short so far)", shard, what, count)


def _record_skipped(example_id: tf.Tensor) -> bool:
    global _skipped
    with _lock:
        _skipped += 1
        count = _skipped
    if count <= _MAX_LOGGED:
        logging.warning("skipped undecodable image %s (%d skipped so far%s)",
                        example_id.numpy().decode("utf-8", "replace"), count,
                        "; no more will be logged one by one" if count == _MAX_LOGGED else "")
    return False


def _placeholder(spec):
    shape = [0 if d is None else d for d in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def map_skipping_errors(dataset: tf.data.Dataset, fn: Callable, id_fn: Callable,
                        num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """`dataset.map(fn)`, in order, without the elements on which `fn` raises an error.

    `id_fn(*element)` gives a string tensor naming the element (file, shard and record) for the
    log.  Elements must be tuples or single structures as in `Dataset.map`.
    """
    def attempt(*element):
        example_id = id_fn(*element)
        succeeded = tf.data.Dataset.from_tensors(element).map(lambda *e: (fn(*e), True))
        failed = tf.nest.map_structure(_placeholder, succeeded.element_spec[0])
        fallback = tf.data.Dataset.from_tensors((failed, False))
        first = succeeded.ignore_errors().concatenate(fallback).take(1)
        return first.map(lambda output, ok: (output, ok, example_id))

    def count_failure(output, ok, example_id):
        ok = tf.cond(ok, lambda: ok, lambda: tf.py_function(_record_skipped, [example_id], tf.bool))
        return output, ok

    return (dataset
            .interleave(attempt, num_parallel_calls=num_parallel_calls, deterministic=True)
            .map(count_failure)
            .filter(lambda output, ok: ok)
            .map(lambda output, ok: output))
