"""Skip examples whose image cannot be decoded, and count them.

tf.data has no try/except: `Dataset.ignore_errors()` drops failing elements silently.  Here each
element is processed inside its own one-element dataset; a failure leaves it empty and a
placeholder marked "failed" takes its place.  Failed elements are counted (and the first ones
logged by id) in this process, then filtered out.  The extra per-element dataset costs some tens
of microseconds, small next to decoding an image.

Only errors raised by `fn` are skipped; errors upstream (a label out of range, a missing shard)
still stop the pipeline.
"""

import threading
from typing import Callable

import tensorflow as tf
from absl import logging

_MAX_LOGGED = 100

_lock = threading.Lock()
_skipped = 0


def skipped_images() -> int:
    """How many images this process skipped as undecodable so far (all pipelines, all epochs).

    Read it before and after an epoch for that epoch's count.  Elements in flight count once
    they reach the point where they are dropped.
    """
    return _skipped


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
