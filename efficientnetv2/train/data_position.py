"""Where each input pipeline is inside the epoch, so that a resumed epoch skips records, not batches.

A run stopped at step k of an epoch resumes with the epoch's remaining batches. Skipping k steps of
built batches would read, decode and augment every example of them first (up to an epoch of
images). The epoch is a pure function of (seed, epoch) and an example's augmentation of its position
in the stream, so the same batches follow from dropping the records those k steps used before
decoding (``build_train_dataset(start=(batches, records))``). That count is k x the batch, plus the
undecodable images among them, which only decoding finds: so each batch carries its
(batches, records) through the pipeline, this class writes them into a table indexed by the batch's
place in the run's data (a table, not a running value: the input pipeline prefetches ahead of the
step), and a SIGTERM save reads the entry of the last batch trained into the checkpoint
(``RunCheckpoint.data_position``: one row per input pipeline, (per-replica batch, batches,
records)).

Only the pipelines of this process are seen. Under several workers each has its own, so the chief
cannot save them all; the checkpoint then holds no rows, and such a resume (and one from a
checkpoint written before the rows existed) skips the built batches, decoding them: slow, still
exact.
"""

import numpy as np
import tensorflow as tf

from efficientnetv2.io.checkpointing import plain_variable

__all__ = ["DataPosition"]


class DataPosition:
    """The (batches, records) of this process' input pipelines, from a checkpoint and as trained.

    Args:
        saved: the checkpoint's rows, int64 [num_pipelines, 3] of (per-replica batch, batches,
            records); empty when unknown.
    """

    def __init__(self, saved=()):
        self.saved = np.asarray(saved, np.int64).reshape(-1, 3)
        self._tables = {}  # input pipeline id -> (table, batch, start, batches per step)
        self._num_pipelines = None

    def start(self, context, batch_size):
        """(batches, records) to resume this pipeline from, or None when the checkpoint does not say
        (no rows, rows of another number of pipelines or of another batch)."""
        if len(self.saved) != context.num_input_pipelines:
            return None
        row = self.saved[context.input_pipeline_id]
        return (int(row[1]), int(row[2])) if row[0] == batch_size else None

    def track(self, dataset, context, batch_size, start, batches_per_step, num_batches):
        """``dataset`` (batches with their (batches, records), ``with_position``) without the position,
        which is written into this pipeline's table; ``start``: the position before its first batch
        (None: unknown)."""
        table = plain_variable(tf.fill([max(num_batches, 1), 2], tf.constant(-1, tf.int64)), name="data_position")
        self._tables[context.input_pipeline_id] = (table, batch_size, start, batches_per_step)
        self._num_pipelines = context.num_input_pipelines

        @tf.autograph.experimental.do_not_convert
        def record(index, batch):
            images, labels, position = batch
            with tf.control_dependencies([table.scatter_nd_update([[index]], [position])]):
                return tf.nest.map_structure(tf.identity, images), labels

        return dataset.enumerate().map(record)

    def rows(self, steps):
        """The rows to save after ``steps`` steps of the data tracked last; empty unless every input
        pipeline is in this process and its position is known."""
        if self._num_pipelines is None or len(self._tables) != self._num_pipelines:
            return np.zeros([0, 3], np.int64)
        rows = []
        for pipeline_id in range(self._num_pipelines):
            table, batch_size, start, batches_per_step = self._tables[pipeline_id]
            used = steps * batches_per_step
            position = start if used == 0 else tuple(table[used - 1].numpy())
            if position is None or position[0] < 0:
                return np.zeros([0, 3], np.int64)
            rows.append((batch_size, *position))
        return np.asarray(rows, np.int64)
