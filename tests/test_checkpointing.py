"""checkpointing: the one reader (EMA under our name, older checkpoints), the candidates and fallback
every restore goes through, failed saves, leftovers.

Training's resume-after-damage behaviour is in test_faults.py; these are the module's functions on
their own, with a tiny model where a real checkpoint is needed. Expected EMA values come from the
optimizer that was saved, not from the reader.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import functional_saver

from efficientnetv2 import build_model
from efficientnetv2.io.checkpointing import (
    CheckpointError,
    RunCheckpoint,
    checkpoint_candidates,
    find_checkpoint,
    random_states,
    read_weights,
    remove_temp_folders,
    restore_model,
    restore_with_fallback,
)
from efficientnetv2.train.optimizers import RMSprop, swap_ema_weights
from tests.training_helpers import TINY_BLOCKS


def _tiny_checkpoint(directory):
    model = build_model("s", num_classes=3, blocks=TINY_BLOCKS, head_filters=16)
    optimizer = RMSprop(0.01, use_ema=True)
    optimizer.build(model.trainable_variables)
    return model, RunCheckpoint(str(directory), model, optimizer, max_to_keep=3)


def _model(**kwargs):
    return build_model("s", **{"num_classes": 3, "blocks": TINY_BLOCKS, "head_filters": 16, **kwargs})


def _trained_looking(model, optimizer, seed=0):
    """Training weights, batch-norm statistics and EMA weights that all differ."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0.5, 0.2, v.shape).astype("float32"))
    for average in optimizer._model_variables_moving_average:
        average.assign(rng.normal(0, 0.2, average.shape).astype("float32"))
    optimizer.iterations.assign(7)


def _snapshot(model, optimizer):
    """(weights by path, EMA weights by path), the expected values (swap_ema_weights' pairing)."""
    weights = {v.path: np.array(v) for v in model.weights}
    with swap_ema_weights(model, optimizer) as used:
        assert used
        ema = {v.path: np.array(v) for v in model.trainable_weights}
    return weights, ema


def _write_older(directory, model, optimizer, with_rng=True):
    """A checkpoint as the versions before the ``ema`` entry wrote it (and, without ``with_rng``, before
    the random-generator states): the EMA only inside the optimizer."""
    objects = dict(model=model, optimizer=optimizer, epoch=tf.Variable(3, dtype=tf.int64),
                   step_in_epoch=tf.Variable(0, dtype=tf.int64))
    if with_rng:
        objects["rng"] = random_states(model)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), str(directory), max_to_keep=3)
    return manager.save(checkpoint_number=30)


def test_ema_is_saved_under_our_name_and_read_back_by_every_path(tmp_path):
    """One reader: resume, export (restore_model) and fine-tuning (read_weights) get the same weights;
    the EMA is found under ema/<variable path>, also when mixed_float16 wrapped the optimizer."""
    model = _model()
    optimizer = keras.optimizers.LossScaleOptimizer(RMSprop(0.01, use_ema=True))
    optimizer.build(model.trainable_variables)
    _trained_looking(model, optimizer.inner_optimizer)
    weights, ema = _snapshot(model, optimizer)
    path = RunCheckpoint(str(tmp_path), model, optimizer).save(1, global_step=7)
    names = {name for name, _ in tf.train.list_variables(path)}
    assert "ema/block3a.Sse.Sse_reduce.Skernel/.ATTRIBUTES/VARIABLE_VALUE" in names

    read = read_weights(path)
    assert read.values.keys() == weights.keys() and read.ema.keys() == ema.keys() and read.num_classes == 3
    for name in weights:
        np.testing.assert_array_equal(read.values[name], weights[name], err_msg=name)
    for name in ema:
        np.testing.assert_array_equal(read.ema[name], ema[name], err_msg=name)

    fresh = _model()  # Built in float32 with no optimizer: an export's model.
    assert restore_model(path, fresh, use_ema=True)
    for v in fresh.weights:
        np.testing.assert_array_equal(np.array(v), ema.get(v.path, weights[v.path]), err_msg=v.path)
    assert any(np.abs(ema[p] - weights[p]).max() > 0.1 for p in ema), "EMA and training weights must differ"
    fresh = _model()
    assert not restore_model(path, fresh, use_ema=False)
    for v in fresh.weights:
        np.testing.assert_array_equal(np.array(v), weights[v.path], err_msg=v.path)


@pytest.mark.parametrize("with_rng", [True, False])
def test_checkpoints_written_before_the_ema_entry_still_resume_and_read(tmp_path, with_rng, caplog):
    model, optimizer = _model(), RMSprop(0.01, use_ema=True)
    optimizer.build(model.trainable_variables)
    _trained_looking(model, optimizer, seed=3)
    weights, ema = _snapshot(model, optimizer)
    path = _write_older(tmp_path, model, optimizer, with_rng=with_rng)
    assert not any(name.startswith("ema/") for name, _ in tf.train.list_variables(path))

    resumed, resumed_optimizer = _model(), RMSprop(0.01, use_ema=True)
    resumed_optimizer.build(resumed.trainable_variables)
    checkpoint = RunCheckpoint(str(tmp_path), resumed, resumed_optimizer)
    with caplog.at_level("WARNING"):
        assert checkpoint.restore_latest() == path
    assert checkpoint.position == (3, 0) and int(resumed_optimizer.iterations.numpy()) == 7
    assert ("no random-generator states" in caplog.text) is (not with_rng)
    assert _snapshot(resumed, resumed_optimizer)[1].keys() == ema.keys()
    for name, value in _snapshot(resumed, resumed_optimizer)[1].items():
        np.testing.assert_array_equal(value, ema[name], err_msg=name)

    read = read_weights(path)  # Their EMA found by Keras' name for it.
    for name in ema:
        np.testing.assert_array_equal(read.ema[name], ema[name], err_msg=name)
    fresh = _model()
    assert restore_model(path, fresh)
    for v in fresh.weights:
        np.testing.assert_array_equal(np.array(v), ema.get(v.path, weights[v.path]), err_msg=v.path)


def test_run_without_ema_gives_its_training_weights(tmp_path):
    model, optimizer = _model(), RMSprop(0.01)
    optimizer.build(model.trainable_variables)
    path = RunCheckpoint(str(tmp_path), model, optimizer).save(1, global_step=3)
    assert read_weights(path).ema == {}
    fresh = _model()
    assert not restore_model(path, fresh)
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_restore_model_refuses_another_architecture_naming_the_weights(tmp_path):
    model, checkpoint = _tiny_checkpoint(tmp_path)
    path = checkpoint.save(1, global_step=10)
    cases = {
        "wider": (_model(blocks=TINY_BLOCKS.replace("i16_o16_se", "i16_o24_se")),
                  r"of the wrong shape: block3a/project_conv/kernel: \(1, 1, 32, 16\) in the checkpoint, "
                  r"\(1, 1, 32, 24\) in the model"),
        "deeper": (_model(blocks=TINY_BLOCKS + ",r1_k3_s1_e2_i16_o16_se0.25"), r"weight\(s\) missing: block4a/"),
        "shallower": (_model(blocks=TINY_BLOCKS.rsplit(",", 1)[0], head_filters=16),
                      r"weight\(s\) the model does not have: block3a/"),
        "other classes": (_model(num_classes=5), r"predictions/bias: \(3,\) in the checkpoint, \(5,\)"),
    }
    for name, (other, message) in cases.items():
        before = [np.array(w) for w in other.weights]
        with pytest.raises(ValueError, match=r"the checkpoint does not match model 'efficientnetv2-s': .*" + message):
            restore_model(path, other)
        for a, b in zip(before, other.weights):
            np.testing.assert_array_equal(a, np.array(b), err_msg=name)  # Nothing assigned on refusal.


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


@pytest.mark.parametrize("index, problem", [
    (b"", "damaged (empty)"),
    (bytes(range(256)), "damaged (unreadable: UnicodeDecodeError"),
    (b'model_checkpoint_path: "ckpt-9"\nall_model_checkpoint_paths: "ckpt-9"\n', "damaged (it names ckpt-9, not on disk)"),
])
def test_a_damaged_index_falls_back_to_the_checkpoints_on_disk_naming_it(tmp_path, caplog, index, problem):
    _, checkpoint = _tiny_checkpoint(tmp_path)
    for step in (2, 3, 4):
        checkpoint.save(epoch=step, global_step=step)
    (tmp_path / "checkpoint").write_bytes(index)
    newest = str(tmp_path / "ckpt-4")
    expected = f"Checkpoint index {tmp_path / 'checkpoint'} is {problem}"

    # Export and prediction: the candidates, without writing anything.
    with caplog.at_level("WARNING"):
        assert checkpoint_candidates(str(tmp_path)) == [newest, str(tmp_path / "ckpt-3"), str(tmp_path / "ckpt-2")]
        assert find_checkpoint(str(tmp_path)) == newest
    assert expected in caplog.text and "using the checkpoints on disk instead (ckpt-4, ckpt-3, ckpt-2)" in caplog.text
    assert (tmp_path / "checkpoint").read_bytes() == index

    # Training and evaluation: their manager reads the index when built, so it is rewritten first.
    caplog.clear()
    with caplog.at_level("WARNING"):
        model, restored = _tiny_checkpoint(tmp_path)
        assert restored.restore_latest() == newest
    assert restored.position == (4, 0)
    assert f"Checkpoint index {tmp_path / 'checkpoint'} was {problem}" in caplog.text
    assert tf.train.latest_checkpoint(str(tmp_path)) == newest
    assert os.path.basename(restored.save(epoch=5, global_step=5)) == "ckpt-5"


def test_a_damaged_index_without_checkpoints_is_removed_by_a_writer(tmp_path, caplog):
    (tmp_path / "checkpoint").write_bytes(b"")
    with caplog.at_level("WARNING"):
        _, checkpoint = _tiny_checkpoint(tmp_path)
    assert checkpoint.restore_latest() is None
    assert not (tmp_path / "checkpoint").exists() and "no checkpoint is on disk; removed it" in caplog.text


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
