"""checkpointing: the candidates and fallback every restore goes through, failed saves, leftovers.

Training's resume-after-damage behaviour is in test_faults.py; these are the module's functions on
their own, with a tiny model where a real checkpoint is needed.
"""

import os

import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import functional_saver

from efficientnetv2 import build_model
from efficientnetv2.checkpointing import (
    CheckpointError,
    RunCheckpoint,
    checkpoint_candidates,
    remove_temp_folders,
    restore_with_fallback,
)
from efficientnetv2.optimizers import RMSprop
from tests.training_helpers import TINY_BLOCKS


def _tiny_checkpoint(directory):
    model = build_model("s", num_classes=3, blocks=TINY_BLOCKS, head_filters=16)
    optimizer = RMSprop(0.01, use_ema=True)
    optimizer.build(model.trainable_variables)
    return model, RunCheckpoint(str(directory), model, optimizer, max_to_keep=3)


def _touch(path):
    with open(path, "w") as f:
        f.write("x")


def test_candidates_newest_first_from_the_files_without_an_index(tmp_path):
    for n in (5, 20, 100):
        _touch(tmp_path / f"ckpt-{n}.index")
    _touch(tmp_path / "notes.index")
    assert checkpoint_candidates(str(tmp_path)) == [str(tmp_path / f"ckpt-{n}") for n in (100, 20, 5)]
    assert checkpoint_candidates(str(tmp_path / "absent")) == []


def test_fallback_returns_the_first_that_restores_and_names_the_damaged(tmp_path, caplog):
    for n in (10, 20, 30):
        _touch(tmp_path / f"ckpt-{n}.index")

    def restore(path):
        if not path.endswith("ckpt-10"):
            raise IndexError("Read less bytes than requested")
        return f"restored {os.path.basename(path)}"

    with caplog.at_level("WARNING"):
        assert restore_with_fallback(str(tmp_path), restore) == "restored ckpt-10"
    assert "ckpt-30" in caplog.text and "ckpt-20" in caplog.text and "IndexError" in caplog.text

    def broken(path):
        raise IndexError("Read less bytes than requested")

    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be restored.*ckpt-30 \(IndexError.*"
                                              r"ckpt-20 \(IndexError.*ckpt-10 \(IndexError") as error:
        restore_with_fallback(str(tmp_path), broken)
    assert "\n" not in str(error.value)
    assert restore_with_fallback(str(tmp_path / "empty"), broken) is None


def test_explicit_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    _, checkpoint = _tiny_checkpoint(tmp_path)
    path = checkpoint.save(1, global_step=10)
    data = tf.io.gfile.glob(path + ".data-*")[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    _, fresh = _tiny_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*ckpt-10 cannot be restored \(") as error:
        fresh.restore(path)
    assert "\n" not in str(error.value)


def test_leftover_temp_folders_are_removed_at_the_first_save_and_nothing_else(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    _touch(outside / "keep")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "ckpt-7_temp").mkdir()
    _touch(folder / "ckpt-7_temp" / "part-00000-of-00001.data-00000-of-00001")
    decoys = ["ckpt-8_temp.txt", "my_ckpt-7_temp", "ckpt-x_temp", "ckpt-7_temp_old", "ckpt-8_temp"]
    for name in decoys[:4]:
        (folder / name).mkdir()
        _touch(folder / name / "keep")
    _touch(folder / "ckpt-8_temp")  # A file of that name: TensorFlow writes folders.
    os.symlink(outside, folder / "ckpt-9_temp")
    _, checkpoint = _tiny_checkpoint(folder)
    # Not at construction: an evaluation's RunCheckpoint must not remove a save in progress.
    assert (folder / "ckpt-7_temp").exists()
    with caplog.at_level("WARNING"):
        checkpoint.save(1, global_step=10)
    assert not (folder / "ckpt-7_temp").exists()
    assert "ckpt-7_temp" in caplog.text
    for name in decoys:
        assert (folder / name).exists(), name
    assert os.path.islink(folder / "ckpt-9_temp") and (outside / "keep").exists()
    assert remove_temp_folders(str(tmp_path / "absent")) == []


def test_failed_save_is_a_checkpoint_error_and_keeps_the_previous(tmp_path, monkeypatch):
    model, checkpoint = _tiny_checkpoint(tmp_path)
    first = checkpoint.save(1, global_step=10)

    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    # TensorFlow writes the shards into ckpt-20_temp/, then merges them into place: fail the merge.
    monkeypatch.setattr(functional_saver.gen_io_ops, "merge_v2_checkpoints", disk_full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*ckpt-20 \(ResourceExhaustedError: "
                                              r"No space left on device\); the previous checkpoint "
                                              r".*ckpt-10 is kept") as error:
        checkpoint.save(2, global_step=20)
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "ckpt-20_temp")
    assert tf.train.latest_checkpoint(str(tmp_path)) == first
    _, fresh = _tiny_checkpoint(tmp_path)
    assert fresh.restore_latest() == first and fresh.position == (1, 0)
