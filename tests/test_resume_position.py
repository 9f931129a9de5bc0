"""A resumed epoch skips records, not built batches (``build_train_dataset(start=...)``,
``efficientnetv2/train/data_position.py``): the same batches, bit for bit, undecodable images included,
and a resume decodes only what it trains on."""

import os

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import pipeline
from efficientnetv2.train import data_position, training
from tests.datasets_helpers import jpeg_bytes, make_folder, smooth_image, write
from tests.test_faults import assert_same_checkpoints, checkpoint_values
from tests.test_steps_per_execution import _SigtermAt
from tests.training_helpers import tiny_config

# Crop, flip and mixup keyed by position; RandAugment is too, but costs seconds to build.
KWARGS = dict(batch_size=2, image_size=16, randaug_magnitude=0.0, mixup_alpha=0.2, seed=3, epoch=1)


def _folder_with_undecodable_images(root):
    """13 readable JPEGs and 2 undecodable files in train/, 2 JPEGs in val/."""
    make_folder(os.path.join(root, "train"), {"a": 7, "b": 6})
    make_folder(os.path.join(root, "val"), {"a": 1, "b": 1})
    good = jpeg_bytes(smooth_image(9))
    write(os.path.join(root, "train", "a", "truncated.jpg"), good[: len(good) // 3])
    write(os.path.join(root, "train", "b", "text.jpg"), b"not a jpeg")
    return datasets.get_source("auto", root)


@pytest.fixture(scope="module")
def faulty_source(tmp_path_factory):
    return _folder_with_undecodable_images(str(tmp_path_factory.mktemp("faulty")))


def _arrays(dataset):
    """Each batch flattened: images, mix (mixup is on), labels[, position]."""
    return [[t.numpy() for t in tf.nest.flatten(batch)] for batch in dataset]


@pytest.mark.parametrize("pipeline_id", [None, 1])
def test_a_resumed_epoch_has_the_uninterrupted_epochs_batches_bit_for_bit(faulty_source, pipeline_id):
    context = None if pipeline_id is None else tf.distribute.InputContext(2, pipeline_id, 2)
    kwargs = dict(KWARGS, input_context=context)
    full = _arrays(datasets.build_train_dataset(faulty_source, with_position=True, **kwargs))
    total = 15 if context is None else 7  # Records of this pipeline, undecodable ones included.
    assert len(full) >= 2
    used = [tuple(batch[-1]) for batch in full]
    assert [u[0] for u in used] == list(range(1, len(full) + 1))
    # Resumes before and after the first undecodable image (a batch whose records outnumber its examples).
    after = next(k for k, (batches, records) in enumerate(used) if records > 2 * batches)
    assert used[-1][1] <= total
    for k in sorted({0, after}):
        start = used[k]
        rest = _arrays(datasets.build_train_dataset(faulty_source, start=start, with_position=True, **kwargs))
        assert len(rest) == len(full) - k - 1
        for a, b in zip(rest, full[k + 1:]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    plain = _arrays(datasets.build_train_dataset(faulty_source, start=used[0], **kwargs))
    assert len(plain[0]) == 3  # Without with_position: ((images, mix), labels).
    np.testing.assert_array_equal(plain[0][0], full[1][0])


def test_a_start_that_uses_fewer_records_than_its_batches_is_refused(faulty_source):
    with pytest.raises(ValueError, match="3 batches of 2 use at least 6 records"):
        datasets.build_train_dataset(faulty_source, start=(3, 5), **KWARGS)


def _counting_train_example(monkeypatch):
    """A counter of the calls of ``pipeline.train_example`` (decode, crop, augment) as the data runs."""
    with tf.device("/CPU:0"):
        calls = tf.Variable(0, dtype=tf.int64, trainable=False)
    original = pipeline.train_example

    def counted(*args, **kwargs):
        with tf.control_dependencies([calls.assign_add(1)]):
            return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_example", counted)
    return calls


def test_a_resume_decodes_only_the_records_after_its_start(monkeypatch, faulty_source):
    calls = _counting_train_example(monkeypatch)
    full = _arrays(datasets.build_train_dataset(faulty_source, with_position=True, **KWARGS))
    assert int(calls.numpy()) == 15
    for batches, records in [tuple(full[1][-1]), tuple(full[4][-1])]:
        calls.assign(0)
        _arrays(datasets.build_train_dataset(faulty_source, start=(batches, records), **KWARGS))
        assert int(calls.numpy()) == 15 - records  # The old skip of built batches decoded all 15.


def test_positions_are_saved_from_the_table_not_from_the_prefetch():
    context = tf.distribute.InputContext(1, 0, 1)
    position = data_position.DataPosition()
    batches = tf.data.Dataset.range(5).map(lambda i: (tf.zeros([2, 1]), tf.zeros([2, 1]), tf.stack([i + 4, 3 * i + 13])))
    dataset = position.track(batches.prefetch(5), context, 2, (3, 10), batches_per_step=1, num_batches=5)
    iterator = iter(dataset)
    np.testing.assert_array_equal(position.rows(0), [[2, 3, 10]])  # Before any step: where it started.
    next(iterator), next(iterator)
    np.testing.assert_array_equal(position.rows(2), [[2, 5, 16]])
    assert position.start(context, 2) is None  # No saved rows.
    resumed = data_position.DataPosition(position.rows(2))
    assert resumed.start(context, 2) == (5, 16) and resumed.start(context, 4) is None
    assert resumed.start(tf.distribute.InputContext(2, 0, 2), 2) is None
    unknown = data_position.DataPosition()
    unknown.track(batches, context, 2, None, batches_per_step=1, num_batches=5)
    assert unknown.rows(0).shape == (0, 3)


@pytest.mark.slow  # a straight run and three resumed ones on a folder; minutes on 2 CPU cores
def test_a_preempted_run_with_undecodable_images_and_a_repeated_epoch_resumes_bit_identically(tmp_path):
    """15 records (2 undecodable) give 6 batches of 2 a pass; epochs of 8 steps repeat the pass. A SIGTERM
    saved at step 5 holds the records used (10 or more), one at step 7 a position in the second pass."""
    source_dir = str(tmp_path / "data")
    _folder_with_undecodable_images(source_dir)
    config = tiny_config(**{"data.data_dir": source_dir, "data.dataset": "auto", "train.batch_size": 2,
                            "train.steps_per_epoch": 8, "train.epochs": 2, "progressive.num_stages": 1,
                            "eval.batch_size": 2})
    training.train(config, str(tmp_path / "straight"), verbose=0)
    run = str(tmp_path / "preempted")
    # A SIGTERM is acted on after the step that follows the one it arrives in.
    with pytest.raises(training.Preempted, match=r"after step 5/8"):
        training.train(config, run, verbose=0, callbacks=[_SigtermAt(0, 3)])
    _, values = checkpoint_values(run)
    batches, records = values["data_position/.ATTRIBUTES/VARIABLE_VALUE"][0][1:]
    assert batches == 5 and records >= 10
    with pytest.raises(training.Preempted, match=r"after step 7/8"):
        training.train(config, run, verbose=0, callbacks=[_SigtermAt(0, 0)])
    _, values = checkpoint_values(run)
    batch, batches, records = values["data_position/.ATTRIBUTES/VARIABLE_VALUE"][0]
    assert (batch, batches) == (2, 1) and records >= 2  # The second pass's first batch.
    training.train(config, run, verbose=0)
    assert_same_checkpoints(tmp_path / "straight", run)
