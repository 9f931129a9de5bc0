"""Bad data in a run: a huge image header, an empty class, a data folder that disappears mid-run."""

import os
import shutil

import keras
import pytest
import tensorflow as tf

import datasets
from efficientnetv2 import training
from tests.datasets_helpers import jpeg_bytes, make_folder, smooth_image, write
from tests.training_helpers import tiny_config


def huge_header_jpeg(height=20000, width=20000):
    """A small JPEG whose frame header claims ``height`` x ``width`` pixels."""
    data = bytearray(jpeg_bytes(smooth_image(1)))
    start = data.find(b"\xff\xc0")
    data[start + 5:start + 7] = height.to_bytes(2, "big")
    data[start + 7:start + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _folder(root):
    make_folder(os.path.join(root, "train"), {"a": 6, "b": 6})
    make_folder(os.path.join(root, "val"), {"a": 2, "b": 2})
    return root


def test_huge_header_is_skipped_and_counted(tmp_path):
    root = _folder(str(tmp_path))
    write(os.path.join(root, "train", "a", "huge.jpg"), huge_header_jpeg())
    source = datasets.get_source("auto", root)
    before = datasets.skipped_images()
    batches = list(datasets.build_train_dataset(source, batch_size=4, image_size=32, randaug_magnitude=5))
    assert len(batches) == 3 and datasets.skipped_images() - before == 1


def test_empty_class_folder_is_a_clear_error_before_any_work(tmp_path):
    root = _folder(str(tmp_path))
    os.makedirs(os.path.join(root, "train", "c"))
    with pytest.raises(ValueError, match=r"class folder .*train/c' has no images"):
        training.train(tiny_config(**{"data.dataset": "folder", "data.data_dir": root}), str(tmp_path / "run"),
                       verbose=0)
    assert not os.path.exists(tmp_path / "run")


class DeleteFolderAfterFirstEpoch(keras.callbacks.Callback):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def on_epoch_end(self, epoch, logs=None):
        shutil.rmtree(self.root, ignore_errors=True)


def test_data_folder_disappearing_mid_run_stops_with_a_clear_error(tmp_path):
    root = _folder(str(tmp_path / "data"))
    config = tiny_config(**{"data.dataset": "folder", "data.data_dir": root, "train.batch_size": 4,
                            "train.steps_per_epoch": None})
    run = str(tmp_path / "run")
    with pytest.raises(training.DataExhausted, match=r"epoch 2 ran out after 0 of 3 steps .* disappear"):
        training.train(config, run, verbose=0, callbacks=[DeleteFolderAfterFirstEpoch(root)])
    # Epoch 1 was saved; the empty epoch 2 was not.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run, "checkpoints")))
    assert int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 1
