"""The tf.data builders: one epoch of training batches, the eval batches, steps per epoch.

Randomness is stateless.  From (seed, epoch) come the epoch's reading order (shared by all input
pipelines, so their shards stay disjoint) and, with the pipeline id and an example's position in
this pipeline's stream, the example's crop, flip and RandAugment; each batch's mixup/CutMix comes
from (seed, epoch, pipeline id, batch number).  A skipped undecodable image does not shift the
positions of the others.
"""

from typing import Optional, Tuple

import tensorflow as tf

from datasets import decode, mixing, ordering, randaugment
from datasets.skipping import map_skipping_errors
from datasets.source import Source

_ORDER_STREAM, _EXAMPLE_STREAM, _BATCH_STREAM = 1, 2, 3


def _stream_seed(seed: int, epoch: int, stream: int, pipeline_id: int = 0) -> tf.Tensor:
    key = tf.constant([seed, epoch], tf.int64)
    for value in (stream, pipeline_id):
        key = tf.random.experimental.stateless_fold_in(key, value)
    return key


def targets(label: tf.Tensor, num_classes: int, multi_label: bool = False) -> tf.Tensor:
    """Class id -> float32 one-hot [num_classes]; with multi_label, ids [n] -> multi-hot."""
    if multi_label:
        return tf.minimum(tf.reduce_sum(tf.one_hot(label, num_classes, dtype=tf.float32), axis=0), 1.0)
    return tf.one_hot(label, num_classes, dtype=tf.float32)


def train_example(example: dict, seed: tf.Tensor, image_size: int, num_classes: int,
                  multi_label: bool = False, randaug_magnitude=0.0, randaug_num_layers: int = 2,
                  randaug_pixel_scale: float = 1.0, crop_area_min: float = decode.AREA_RANGE[0]):
    """One example -> (uint8 [S, S, 3], float32 [num_classes]) for training: random-resized crop
    (at least `crop_area_min` of the image; crop-only decode for JPEG), resize, flip, RandAugment,
    rounded to whole levels (as the reference's RandAugment, which works in uint8; a quarter of
    float32's bytes to batch and to send to the device)."""
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = decode.random_resized_crop(example["image"], crop_seed, image_size, crop_area_min)
    image = decode.random_flip(image, flip_seed)
    skip_randaugment = isinstance(randaug_magnitude, (int, float)) and randaug_magnitude == 0
    if randaug_num_layers > 0 and not skip_randaugment:
        image = randaugment.randaugment(image, augment_seed, randaug_magnitude, randaug_num_layers,
                                        randaug_pixel_scale)
    # Resize and RandAugment keep values in [0, 255]: no clip needed.
    return tf.cast(tf.round(image), tf.uint8), targets(example["label"], num_classes, multi_label)


def eval_example(example: dict, image_size: int, num_classes: int, multi_label: bool = False):
    """One example -> (center-cropped float32 [S, S, 3], float32 [num_classes])."""
    return (decode.center_crop(example["image"], image_size),
            targets(example["label"], num_classes, multi_label))


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def build_train_dataset(src: Source, batch_size: int, image_size: int, randaug_magnitude=0.0,
                        randaug_num_layers: int = 2, mixup_alpha: float = 0.0,
                        cutmix_alpha: float = 0.0, seed: int = 0, epoch: int = 0,
                        input_context: Optional[tf.distribute.InputContext] = None,
                        key_examples_by: str = "position", start: Tuple[int, int] = (0, 0),
                        with_position: bool = False, randaug_pixel_scale: float = 1.0,
                        crop_area_min: float = decode.AREA_RANGE[0]) -> tf.data.Dataset:
    """One epoch of (images uint8 [B, S, S, 3], labels float32 [B, num_classes]).

    With mixup or CutMix on, the first element is (images, mix float32 [B, 5]): the batch's mixing,
    drawn here and already applied to the labels, but not to the images, which the train step
    mixes on the device (`datasets.mixing.apply(tf.cast(images, tf.float32), mix)`; see
    `datasets.mixing`).

    `batch_size` is per replica; the last partial batch is dropped (static shapes).  The epoch is a
    pure function of (seed, epoch, input pipeline): building it again replays it exactly.

    `start=(batches, records)` resumes the epoch after its first `batches` batches, which used the
    first `records` records of this pipeline's stream (more than batches x batch_size when
    undecodable images were among them): those records are dropped before anything is decoded, and
    the rest keep their positions, so the batches that follow are the uninterrupted epoch's, bit for
    bit.  `with_position` adds to each batch a third element, int64 [2]: (batches, records) after
    it, the `start` that resumes the epoch behind it.

    `key_examples_by="id"` is for tf.data service workers (datasets/service.py), which each run
    this graph on the files the dispatcher hands them, so positions count per worker and collide:
    an example's augmentation is then keyed by its id, a batch's mixup by its first example's id.
    """
    if key_examples_by not in ("position", "id"):
        raise ValueError(f"key_examples_by={key_examples_by!r}; expected 'position' or 'id'")
    start_batch, start_record = (int(n) for n in start)
    if not 0 <= start_batch * batch_size <= start_record:
        raise ValueError(f"start={tuple(start)}: {start_batch} batches of {batch_size} use at least "
                         f"{start_batch * batch_size} records")
    randaugment.check_magnitude(randaug_magnitude)
    randaugment.check_pixel_scale(randaug_pixel_scale)
    if not 0 < crop_area_min <= decode.AREA_RANGE[1]:
        raise ValueError(f"crop_area_min={crop_area_min!r} must be in (0, 1]")
    num_pipelines, pipeline_id = ordering.pipelines(input_context)
    examples = src.examples("train", seed=_stream_seed(seed, epoch, _ORDER_STREAM),
                            input_context=input_context, image_size=image_size)
    example_key = _stream_seed(seed, epoch, _EXAMPLE_STREAM)

    def preprocess(index, example):
        # Keyed by the example's place in the shared order (pipelines take every num-th example), not
        # by the pipeline: an example gets the same crop and RandAugment however many workers read,
        # which is what lets a multi-worker run train on exactly the data of a single-device run.
        global_index = index * num_pipelines + pipeline_id
        if key_examples_by == "id":
            global_index = tf.strings.to_hash_bucket_fast(example["id"], 2**63 - 1)
        example_seed = tf.random.experimental.stateless_fold_in(example_key, global_index)
        return (*train_example(example, example_seed, image_size, src.num_classes, src.multi_label,
                               randaug_magnitude, randaug_num_layers, randaug_pixel_scale, crop_area_min),
                global_index, index)

    # Positions are counted before the resume's skip, which drops records undecoded.
    dataset = examples.enumerate().skip(start_record)
    dataset = map_skipping_errors(dataset, preprocess, lambda index, example: example["id"])
    # Batch first, then mix: mixup/CutMix pair examples within a batch.
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate(start=start_batch)
    mix = mixup_alpha > 0 or cutmix_alpha > 0
    batch_key = _stream_seed(seed, epoch, _BATCH_STREAM, pipeline_id)

    @tf.autograph.experimental.do_not_convert  # no Python control flow on tensors
    def finish(index, batch):
        images, labels, keys, positions = batch
        if mix:
            batch_seed = tf.random.experimental.stateless_fold_in(
                batch_key, keys[0] if key_examples_by == "id" else index)
            plan, labels = mixing.plan(labels, batch_seed, (image_size, image_size), mixup_alpha,
                                       cutmix_alpha)
            images = (images, plan)
        if not with_position:
            return images, labels
        return images, labels, tf.stack([index + 1, positions[-1] + 1])

    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def build_eval_dataset(src: Source, batch_size: int, image_size: int,
                       input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Every eval example once, in a fixed order: center crop, resize, one-hot labels.

    The last batch may be smaller than `batch_size`.
    """
    examples = src.examples("eval", input_context=input_context, image_size=image_size)
    dataset = map_skipping_errors(
        examples, lambda example: eval_example(example, image_size, src.num_classes, src.multi_label),
        lambda example: example["id"])
    return _with_options(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def steps_per_epoch(src: Source, global_batch_size: int) -> int:
    """Full global batches in one epoch of train examples (at least 1)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
    return max(1, src.num_examples("train") // global_batch_size)
