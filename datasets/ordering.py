"""Reading order: sharding across input pipelines and stateless shuffling.

Every order here is a pure function of an explicit seed tensor (never of tf.data's own shuffle,
whose order also depends on TensorFlow's global seed), so an epoch can be replayed exactly.
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

SHUFFLE_BLOCK = 2048


def pipelines(input_context: Optional[tf.distribute.InputContext]) -> Tuple[int, int]:
    """(num_input_pipelines, input_pipeline_id); (1, 0) without a context."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def permutation(n, seed: Optional[tf.Tensor]) -> tf.Tensor:
    """A random permutation of range(n) from `seed`, or range(n) itself when seed is None."""
    indices = tf.range(n, dtype=tf.int64)
    if seed is None:
        return indices
    return tf.random.experimental.stateless_shuffle(indices, seed)


def shard_in_memory(columns: Sequence, seed: Optional[tf.Tensor],
                    input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    """Dataset of rows of equally long `columns`: shuffled by `seed`, then every
    num_input_pipelines-th row from input_pipeline_id, so pipelines split one shared order."""
    num, index = pipelines(input_context)
    columns = [tf.convert_to_tensor(c) for c in columns]
    order = permutation(tf.shape(columns[0], out_type=tf.int64)[0], seed)[index::num]
    return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(c, order) for c in columns))


def shard_files(files: Sequence[str],
                input_context: Optional[tf.distribute.InputContext]) -> Tuple[list, bool]:
    """This pipeline's files, and whether elements must still be sharded.

    With at least as many files as pipelines each pipeline reads every num-th file; otherwise
    every pipeline reads all files and keeps every num-th element.
    """
    num, index = pipelines(input_context)
    files = sorted(files)
    if len(files) >= num:
        return files[index::num], False
    return files, num > 1


def shard_elements(dataset: tf.data.Dataset,
                   input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    num, index = pipelines(input_context)
    return dataset.shard(num, index) if num > 1 else dataset


def block_shuffle(dataset: tf.data.Dataset, seed: tf.Tensor,
                  block_size: int = SHUFFLE_BLOCK) -> tf.data.Dataset:
    """Shuffle within consecutive blocks of `block_size` elements (block i by fold_in(seed, i)).

    A stateless stand-in for `Dataset.shuffle(block_size)`: with shards whose order is shuffled
    and interleaved first, each block mixes examples from many files.
    """
    @tf.autograph.experimental.do_not_convert
    def shuffle(block_index, block):
        block_seed = tf.random.experimental.stateless_fold_in(seed, block_index)
        size = tf.shape(tf.nest.flatten(block)[0], out_type=tf.int64)[0]
        order = permutation(size, block_seed)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

    return dataset.batch(block_size).enumerate().map(shuffle).prefetch(1).unbatch()
