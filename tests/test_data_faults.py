"""Bad data in a run: a huge image header, an empty class, a data folder that disappears mid-run,
corrupt, truncated and vanished TFRecord shards, file names that are not UTF-8."""

import logging
import os
import shutil

import keras
import pytest
import tensorflow as tf

import datasets
from efficientnetv2.io import export
from efficientnetv2.train import training
from datasets import records
from tests.datasets_helpers import (jpeg_bytes, make_folder, make_imagenet_dir, png_bomb, smooth_image,
                                    write, write_imagenet_shards)
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


def test_huge_header_is_skipped_named_and_counted(tmp_path, capfd):
    root = _folder(str(tmp_path))
    huge = write(os.path.join(root, "train", "a", "huge.jpg"), huge_header_jpeg())
    source = datasets.get_source("auto", root)
    before = datasets.skipped_images()
    capfd.readouterr()
    batches = list(datasets.build_train_dataset(source, batch_size=4, image_size=32, randaug_magnitude=5))
    assert len(batches) == 3 and datasets.skipped_images() - before == 1
    assert f"skipped undecodable image {huge} ({before + 1} skipped so far" in capfd.readouterr().err


def test_image_bombs_and_a_cut_short_jpeg_are_skipped_named_and_counted(tmp_path, capfd):
    root = _folder(str(tmp_path))
    bad = [write(os.path.join(root, "train", "a", "bomb.png"), png_bomb(16000, 16000)),
           write(os.path.join(root, "train", "b", "cut.jpg"), huge_header_jpeg(3000, 3000))]
    source = datasets.get_source("auto", root)
    before = datasets.skipped_images()
    capfd.readouterr()
    batches = list(datasets.build_train_dataset(source, batch_size=4, image_size=32))
    assert len(batches) == 3 and datasets.skipped_images() - before == 2
    err = capfd.readouterr().err
    assert all(f"skipped undecodable image {path} (" in err for path in bad)


@pytest.mark.parametrize("data, message", [
    (lambda: png_bomb(16000, 16000), "header declares 16000 x 16000 pixels in {size} bytes, more than the "
                                     "134217728 pixels an image may have (a decompression bomb?)"),
    (lambda: huge_header_jpeg(13000, 13000), "header declares 13000 x 13000 pixels in {size} bytes, more "
                                             "than the 134217728 pixels an image may have (a decompression bomb?)"),
    (lambda: huge_header_jpeg(3000, 3000), "header declares 3000 x 3000 pixels in {size} bytes, more than "
                                           "its bytes can hold (truncated or corrupt)"),
])
def test_predict_refuses_a_bomb_or_cut_short_image_in_one_line(tmp_path, data, message):
    data = data()
    path = write(str(tmp_path / "image"), data)
    with pytest.raises(ValueError) as raised:
        export._load_image(path, 32, 2**20)
    assert str(raised.value) == f"image {path} not decoded: " + message.format(size=len(data))


def test_empty_class_folder_is_a_clear_error_before_any_work(tmp_path):
    root = _folder(str(tmp_path / "data"))
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


# -- TFRecord shards. ------------------------------------------------------------------------------

def _flip_byte(path, fraction=0.5):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        position = int(len(data) * fraction)
        data[position] ^= 0xFF
        f.seek(0)
        f.write(data)


def _truncate(path, fraction=0.6):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


def _ids(dataset):
    return [e["id"].numpy().decode() for e in dataset]


@pytest.mark.parametrize("damage", [_flip_byte, _truncate])
def test_damaged_shard_is_cut_short_named_and_counted(tmp_path, capfd, damage):
    root = make_imagenet_dir(str(tmp_path), train=12, validation=6, num_shards=2)
    src = datasets.get_source("imagenet", root)  # Counts before the damage: the epoch runs short.
    assert (src.num_examples("train"), src.num_examples("eval")) == (12, 6)
    bad = os.path.join(root, "train-00001-of-00002")
    damage(bad)
    before = datasets.skipped_shards()
    capfd.readouterr()
    ids = _ids(src.examples("train", seed=tf.constant([1, 2], tf.int64)))
    assert datasets.skipped_shards() - before == 1
    good = [i for i in ids if "train-00000" in i]
    assert len(good) == 6 and 0 < len(ids) - len(good) < 6  # The records before the damage are kept.
    # The warning is a graph op (tf.print to stderr), not Python logging: see datasets/skipping.py.
    assert (f"TFRecord shard {bad} is corrupt or truncated: read {len(ids) - len(good)} records"
            in capfd.readouterr().err)
    # The pipeline runs to the end of the epoch: fewer batches, no error.
    batches = list(datasets.build_train_dataset(src, batch_size=2, image_size=16, seed=1))
    assert 3 <= len(batches) < 6


def test_damaged_eval_shard_and_counting_are_skipped_too(tmp_path, capfd):
    root = make_imagenet_dir(str(tmp_path), train=4, validation=8, num_shards=2)
    damage = os.path.join(root, "validation-00000-of-00002")
    _flip_byte(damage, 0.05)  # In the first record: nothing of this shard is read.
    capfd.readouterr()
    src = datasets.get_source("imagenet", root)
    assert src.num_examples("eval") == 4  # Counted without the damaged shard.
    labels = [y for _, y in datasets.build_eval_dataset(src, batch_size=3, image_size=16)]
    assert sum(len(y) for y in labels) == 4
    assert capfd.readouterr().err.count(f"TFRecord shard {damage} is corrupt") == 2  # Counting, then reading.


def test_shard_that_vanished_is_skipped_and_named(tmp_path, capfd):
    root = make_imagenet_dir(str(tmp_path), train=8, validation=2, num_shards=2)
    src = datasets.get_source("imagenet", root)
    assert src.num_examples("train") == 8  # Takes the shards' sizes.
    gone = os.path.join(root, "train-00000-of-00002")
    os.remove(gone)
    before = datasets.skipped_shards()
    capfd.readouterr()
    ids = _ids(src.examples("train"))
    assert len(ids) == 4 and datasets.skipped_shards() - before == 1
    assert (f"TFRecord shard {gone} is missing or unreadable: could not be opened"
            in capfd.readouterr().err)
    # Its size was taken while it was there: the check at read time found it gone.  A new source
    # finds no size for it and skips it the same way.
    assert -1 not in src.sizes([gone])
    assert len(_ids(datasets.get_source("imagenet", root).examples("train"))) == 4


def test_an_epoch_counts_each_damaged_shard_once_and_says_what_happened(tmp_path, capfd, caplog,
                                                                        monkeypatch):
    root = make_imagenet_dir(str(tmp_path / "data"), train=16, validation=4, num_shards=4)
    truncated, deleted = (os.path.join(root, f"train-0000{i}-of-00004") for i in (1, 2))
    _truncate(truncated)
    kept = sum(i.startswith(truncated + ":") for i in _ids(datasets.get_source("imagenet", root)
                                                            .examples("train")))
    assert 0 < kept < 4
    get_source = datasets.get_source

    def source_then_delete(*args, **kwargs):  # Deleted mid-run: a shard the run has listed.
        source = get_source(*args, **kwargs)
        if os.path.exists(deleted):
            os.remove(deleted)
        return source

    monkeypatch.setattr(datasets, "get_source", source_then_delete)
    # 8 + kept examples a pass, 2 batches of 4: the epoch's 4 steps read every shard twice.
    config = tiny_config(**{"data.dataset": "imagenet", "data.data_dir": root, "train.epochs": 1,
                            "progressive.num_stages": 1, "train.batch_size": 4,
                            "train.steps_per_epoch": 4})
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        result = training.train(config, str(tmp_path / "run"), verbose=0)
    assert result["logs"]["skipped_shards"] == 2  # Not 4: each shard once, however often it was read.
    err = capfd.readouterr().err
    assert err.count(f"TFRecord shard {truncated} is corrupt or truncated: read {kept} records") >= 2
    assert err.count(f"TFRecord shard {deleted} is missing or unreadable: could not be opened") >= 2
    assert (f"Epoch 1: 0 undecodable images skipped (see the warnings above for which files); "
            f"2 damaged TFRecord shards skipped (1 corrupt, 1 missing): {truncated} (corrupt: cut "
            f"short after {kept} records), {deleted} (missing: could not be opened)." in caplog.text)


def test_shard_names_with_glob_characters_are_read_as_named(tmp_path):
    root = make_imagenet_dir(str(tmp_path), train=4, validation=2, num_shards=2)
    os.rename(os.path.join(root, "train-00000-of-00002"), os.path.join(root, "train-[0]*?\\-of-00002"))
    before = datasets.skipped_shards()
    assert len(_ids(datasets.get_source("imagenet", root).examples("train"))) == 4
    assert datasets.skipped_shards() == before


def test_healthy_shards_are_read_as_a_plain_interleave_reads_them(tmp_path):
    # More shards than the interleave's cycle (16) and of unequal sizes: a shard's end must not
    # take a turn of its own, or the shards after it would enter the cycle later.
    root = str(tmp_path)
    for i in range(18):
        write_imagenet_shards(root, f"part{i:02d}", [b"x"] * (i % 4 + 1), [0] * (i % 4 + 1), num_shards=1)
        os.rename(os.path.join(root, records.shard_name(f"part{i:02d}", 0, 1)),
                  os.path.join(root, records.shard_name("validation", i, 18)))
    write_imagenet_shards(root, "train", [b"x"], [0], num_shards=1)
    files = sorted(tf.io.gfile.glob(os.path.join(root, "validation-*")))
    expected = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f).enumerate().map(
            lambda i, _: tf.strings.join([f, tf.strings.as_string(i)], ":")),
        cycle_length=16, block_length=1)
    before = datasets.skipped_shards()
    assert _ids(datasets.get_source("imagenet", root).examples("eval")) == [
        e.numpy().decode() for e in expected]
    assert datasets.skipped_shards() == before


# -- File names. ----------------------------------------------------------------------------------

def _non_utf8_file(path: bytes, data: bytes = b"") -> bool:
    """Write `path`; False when this file system refuses names that are not UTF-8."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError:
        return False
    return True


def test_file_and_class_names_that_are_not_utf8_are_left_out_and_named(tmp_path, caplog):
    root = _folder(str(tmp_path))
    class_dir = os.fsencode(os.path.join(root, "train", "a"))
    if not _non_utf8_file(os.path.join(class_dir, b"bad\xff.jpg"), jpeg_bytes(smooth_image(0))):
        pytest.skip("this file system refuses names that are not UTF-8")
    os.makedirs(os.path.join(os.fsencode(root), b"train", b"c\xfe"))
    with caplog.at_level(logging.WARNING):
        src = datasets.get_source("auto", root)
    assert src.class_names == ["a", "b"] and src.num_examples("train") == 12
    assert sorted(src.unreadable_names) == [os.path.join(class_dir, b"bad\xff.jpg"),
                                            os.path.join(os.fsencode(root), b"train", b"c\xfe")]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "b'bad\\xff.jpg'" in messages and repr(os.path.join(root, "train", "a")) in messages
    assert "2 files or folders left out" in src.describe()
    assert len(list(datasets.build_train_dataset(src, batch_size=4, image_size=16))) == 3
