"""Faults: SIGKILL at any point, damaged checkpoints (SIGTERM: tests/test_preemption.py). A killed run
resumes to the same result.

The fault-injection test kills a tiny deterministic run (tests/fault_worker.py) at chosen and random
moments -- mid-epoch, inside a checkpoint write, at the first step of a new progressive stage, and at a
random time -- restarting the same command each time, and requires the final checkpoint to be
bit-identical to an uninterrupted run's.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import build_model
from efficientnetv2.io.checkpointing import CheckpointError, RunCheckpoint
from efficientnetv2.train.optimizers import RMSprop
from tests.training_helpers import TINY_BLOCKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def _worker(model_dir, fault="none", epochs=4, timeout=300):
    return subprocess.run([sys.executable, "-m", "tests.fault_worker", str(model_dir), fault, str(epochs)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def checkpoint_values(model_dir):
    """Every variable of the newest checkpoint of a run: model, optimizer (with EMA), random states,
    position. Not the number of saves made, which a preemption save increases."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    names = [n for n in reader.get_variable_to_shape_map()
             if n not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")]
    return path, {n: reader.get_tensor(n) for n in names}


def assert_same_checkpoints(a_dir, b_dir):
    (path_a, a), (path_b, b) = checkpoint_values(a_dir), checkpoint_values(b_dir)
    assert os.path.basename(path_a) == os.path.basename(path_b)
    assert sorted(a) == sorted(b)
    different = [n for n in a if not np.array_equal(a[n], b[n])]
    assert not different, f"{len(different)} of {len(a)} variables differ, e.g. {different[:3]}"


# Epochs of 5 steps in 2 stages (32 px, then 48 px). In the order run, each restart resumes from what the
# previous kill left: with 2 epochs, the kill inside a save is in the last one (ckpt-10) and the restart
# after it resumes from ckpt-5 to be killed at step 6, the first of stage 2; with 4 epochs the stages
# are epochs 1-2 and 3-4 (steps 11-20).
BEFORE_ANY_CHECKPOINT, IN_A_SAVE, INSIDE_A_STAGE = "step:3", "in_save:2", "step:17"
AT_A_STAGE_START = {2: "step:6", 4: "step:11"}


def _kill_and_resume(tmp_path, faults, epochs):
    """The straight run, then the same run killed at each of ``faults`` and at a random moment, each
    restart resuming what the previous kill left; its final checkpoint must equal the straight one."""
    done = f"DONE {epochs} {5 * epochs}"
    straight = _worker(tmp_path / "straight", epochs=epochs)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert done in straight.stdout

    faulty = tmp_path / "faulty"
    for fault in faults:
        run = _worker(faulty, fault, epochs)
        assert run.returncode == -signal.SIGKILL, (fault, run.stderr[-3000:])
    # A kill at a random moment (start-up, training or saving alike); the seed is printed so that a
    # failure can be rerun at the same moment (FAULT_SEED=<seed>).
    seed = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(2**31)))
    delay = random.Random(seed).uniform(2.0, 12.0)
    print(f"random SIGKILL after {delay:.2f} s (FAULT_SEED={seed})")
    process = subprocess.Popen([sys.executable, "-m", "tests.fault_worker", str(faulty), "none", str(epochs)],
                               cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.kill()
    process.wait()
    final = _worker(faulty, epochs=epochs)
    assert final.returncode == 0, final.stderr[-3000:]
    assert done in final.stdout
    assert_same_checkpoints(tmp_path / "straight", faulty)


def test_sigkill_at_any_point_resumes_to_bit_identical_weights(tmp_path):
    """Killed before any checkpoint, inside a checkpoint write, at the first step of a new stage and at
    a random moment; each kill costs a process (a TensorFlow start), so the sweep below is slow."""
    _kill_and_resume(tmp_path, [BEFORE_ANY_CHECKPOINT, IN_A_SAVE, AT_A_STAGE_START[2]], epochs=2)


# Slow: the test above (2 epochs) kills mid-epoch in stage 1, inside the last save and at the first step of
# stage 2, resuming from the end of stage 1 (ckpt-5); this one (4 epochs) resumes from a checkpoint inside
# stage 1 (ckpt-5) and adds a kill at step 17, a resume inside the second stage (ckpt-15) that
# tests/test_progressive.py's resumed run landing inside a later stage covers in-process. The
# whole sweep again, seven processes.
@pytest.mark.slow
def test_sigkill_sweep_with_a_kill_inside_a_stage_resumes_to_bit_identical_weights(tmp_path):
    _kill_and_resume(tmp_path, [BEFORE_ANY_CHECKPOINT, IN_A_SAVE, AT_A_STAGE_START[4], INSIDE_A_STAGE], epochs=4)


def _tiny_checkpoint(directory):
    model = build_model("s", num_classes=3, blocks=TINY_BLOCKS, head_filters=16)
    optimizer = RMSprop(0.01, use_ema=True)
    optimizer.build(model.trainable_variables)
    return model, RunCheckpoint(str(directory), model, optimizer, max_to_keep=3)


@pytest.mark.parametrize("damage", ["truncate", "delete_data", "delete_index"])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage, caplog):
    model, checkpoint = _tiny_checkpoint(tmp_path)
    first = checkpoint.save(1, global_step=10)
    model.weights[0].assign(model.weights[0] + 1.0)
    second = checkpoint.save(2, global_step=20)
    data = tf.io.gfile.glob(second + ".data-*")[0]
    if damage == "truncate":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif damage == "delete_data":
        os.remove(data)
    else:
        os.remove(second + ".index")
    _, fresh = _tiny_checkpoint(tmp_path)
    with caplog.at_level("WARNING"):
        restored = fresh.restore_latest()
    assert restored == first
    assert fresh.position == (1, 0)
    assert second in caplog.text and first in caplog.text


def test_every_checkpoint_damaged_refuses_to_start_over(tmp_path):
    _, checkpoint = _tiny_checkpoint(tmp_path)
    path = checkpoint.save(1, global_step=10)
    for data in tf.io.gfile.glob(path + ".data-*"):
        with open(data, "wb") as f:
            f.write(b"garbage")
    _, fresh = _tiny_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"refusing to start from scratch.*ckpt-10 \("):
        fresh.restore_latest()


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    _, checkpoint = _tiny_checkpoint(tmp_path)
    assert checkpoint.restore_latest() is None


class _Checkpoint:
    """What the stop messages read of a RunCheckpoint: its reader's newest checkpoint."""

    def __init__(self, latest):
        self.reader = type("Reader", (), {"latest_checkpoint": latest})()


def test_out_of_memory_names_the_batch_and_image_size_and_the_fix():
    from efficientnetv2.train import loop, schedules, training

    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[512,24,192,192]")
    params = schedules.StageParams(stage=1, num_stages=4, image_size=192, randaug_magnitude=5, mixup_alpha=0.0,
                                   dropout_rate=0.1, batch_size=512, learning_rate_scale=1.0)
    with pytest.raises(training.OutOfMemory) as error:
        loop._stop_on_out_of_memory(oom, 5, params, _Checkpoint("run/checkpoints/ckpt-50"))
    assert str(error.value) == (
        "out of memory in epoch 6 (stage 2/4) at global batch 512 and 192 px; lower train.batch_size (or "
        "progressive.max_batch_size, or progressive.image_size_end) and rerun; the last good checkpoint is "
        "run/checkpoints/ckpt-50")


def test_a_nonfinite_loss_before_any_checkpoint_says_so():
    from efficientnetv2.train import loop, training

    monitor = type("Monitor", (), {"nonfinite": float("nan")})()
    params = type("Params", (), {"stage": 0, "image_size": 32})()
    with pytest.raises(training.NonFiniteLoss) as error:
        loop._stop_on_nonfinite_loss(monitor, {}, 0, params, _Checkpoint(None))
    assert "None" not in str(error.value)
    assert str(error.value) == ("loss became nan in epoch 1 (stage 1, 32 px); stopped without saving. No checkpoint "
                                "was saved yet. Lower train.lr_base or check the data.")
