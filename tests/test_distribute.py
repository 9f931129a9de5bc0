"""Distributed training gives the same model as one device: MirroredStrategy over 2 logical CPUs and
MultiWorkerMirroredStrategy with 2 worker processes on localhost (TF_CONFIG, loopback ports) against
one device, on the same data and global batch, over a stage boundary; and evaluation of the same
checkpoint. The runs are in subprocesses (tests/distributed_worker.py): logical devices and the
collective runtime are set once per process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train import distribute
from tests.distributed_worker import ROOT, run_two_workers, worker_env


# Tolerances, derived. Every run trains the same examples with the same crops and RandAugment draws
# (checked below), so the only difference is the order of floating-point sums: a replica computes its
# half batch's gradient and the all-reduce adds the halves, where one device adds all 8 examples at
# once. float32 rounds each sum to ~1e-7 relative (2**-23); RMSProp's step divides the gradient by
# its running RMS, so a relative gradient error becomes the same relative error of a step of size
# ~lr, and the 6 steps add up: differences of ~1e-7..1e-6 on weights of order 1. 1e-5 leaves 10x room and is
# still 4 orders of magnitude below what one real bug does: unsynchronized batch norm moves the
# weights by ~0.3 (asserted in the slow set, so this comparison can fail). mixed_float16 computes activations in
# float16 (2**-10 ~ 1e-3 relative); tolerance 2e-3 (2 float16 ulps at 1.0).
FLOAT32 = dict(rtol=1e-5, atol=1e-5)
FLOAT16 = dict(rtol=2e-3, atol=2e-3)


def _local(work_dir, names):
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_worker", "equivalence-local", str(work_dir), ",".join(names)],
        env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {name: dict(np.load(work_dir / f"{name}.npz")) for name in names}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """One device, and MirroredStrategy (2 logical CPUs) with synchronized batch norm."""
    return _local(tmp_path_factory.mktemp("local"), ["one", "mirrored"])


def _differences(a, b, prefix):
    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys and keys == sorted(k for k in b if k.startswith(prefix)), prefix
    return keys


def assert_same_model(a, b, tolerance):
    """Weights (batch-norm statistics included), EMA weights and optimizer variables agree."""
    for prefix in ("weight:", "ema:", "slot:"):
        for key in _differences(a, b, prefix):
            np.testing.assert_allclose(b[key], a[key], err_msg=key, **tolerance)


def _images(run):
    return [run[k] for k in sorted(k for k in run if k.startswith("images:"))]


def assert_replicas_split_the_global_batch(one, replicas):
    """Each replica's part of the first global step is disjoint from the others', and together they are
    the single device's batch: the same examples with the same augmentation."""
    parts = [{image.tobytes() for image in part} for part in replicas]
    assert all(len(part) == len(images) for part, images in zip(parts, replicas))
    assert sum(len(p) for p in parts) == len(set().union(*parts)), "a replica read another's examples"
    assert set().union(*parts) == {image.tobytes() for image in _images(one)[0]}


@pytest.mark.slow  # two strategies in a subprocess
def test_mirrored_with_synchronized_batch_norm_trains_the_single_device_model(local_runs):
    one, mirrored = local_runs["one"], local_runs["mirrored"]
    assert int(mirrored["replicas"]) == 2 and int(one["replicas"]) == 1
    assert_same_model(one, mirrored, FLOAT32)
    assert_replicas_split_the_global_batch(one, _images(mirrored))
    # The same checkpoint evaluates alike (1,000 examples: the last global batch of 16 is uneven).
    assert float(mirrored["eval_top1"]) == float(one["eval_top1"])
    assert int(mirrored["eval_examples"]) == int(one["eval_examples"]) == 1000


@pytest.mark.slow
def test_unsynchronized_batch_norm_differs_as_expected(tmp_path):
    runs = _local(tmp_path, ["one", "mirrored_unsynced"])
    one, unsynced = runs["one"], runs["mirrored_unsynced"]
    moved = max(np.max(np.abs(unsynced[k] - one[k])) for k in _differences(one, unsynced, "weight:"))
    assert moved > 100 * FLOAT32["atol"], moved  # Per-replica statistics: another model.


@pytest.mark.slow  # two worker processes
def test_multiworker_trains_the_single_device_model(local_runs, tmp_path):
    results = run_two_workers(lambda index: ["equivalence-multiworker", str(tmp_path), str(index)])
    for returncode, err in results:
        assert returncode == 0, err[-4000:]
    one = local_runs["one"]
    workers = [dict(np.load(tmp_path / f"multiworker_{index}.npz")) for index in range(2)]
    for worker in workers:
        assert int(worker["replicas"]) == 2
        assert_same_model(one, worker, FLOAT32)
        assert float(worker["eval_top1"]) == float(one["eval_top1"])
        assert int(worker["eval_examples"]) == 1000
    assert_replicas_split_the_global_batch(one, [_images(worker)[0] for worker in workers])
    # Only the chief wrote the checkpoint; the other worker's temporary folder is gone.
    assert (tmp_path / "multiworker" / "checkpoints" / "checkpoint").exists()
    assert not any(p.name.startswith(".worker-") for p in (tmp_path / "multiworker").iterdir())


@pytest.mark.slow  # two worker processes
def test_multiworker_train_and_eval_evaluates_every_example_once_and_keeps_the_best_on_the_chief(tmp_path):
    """``--mode=train_and_eval`` with 2 workers on a validation split of 13 records in 3 shards (one
    worker reads 9, the other 4: 5 and 2 steps of 2 examples), an evaluation after each of 2 epochs."""
    from efficientnetv2.train import training
    from tests.distributed_worker import make_uneven_eval_data, train_and_eval_config

    make_uneven_eval_data(str(tmp_path / "data"))
    results = run_two_workers(lambda index: ["train-and-eval", str(tmp_path), str(index)], timeout=420)
    for returncode, err in results:  # A worker left waiting in a collective times out here instead.
        assert returncode == 0, err[-4000:]
    chief, other = (json.loads((tmp_path / f"worker_{index}.json").read_text()) for index in range(2))
    assert chief["chief"] and not other["chief"] and chief["replicas"] == 2 and chief["epoch"] == 2
    assert sorted([chief["own_eval_examples"], other["own_eval_examples"]]) == [4, 9]  # Uneven shards.
    # Every worker took part in every evaluation and got the same results; each saw every example once.
    assert chief["evaluations"] == other["evaluations"] and len(chief["evaluations"]) == 2
    assert all(evaluation["eval_examples"] == 13 for evaluation in chief["evaluations"])
    # The best checkpoint is the chief's alone; the other worker saved only into its temporary folder.
    assert chief["saved_into"] == ["run/best", "run/checkpoints"]
    assert other["saved_into"] == ["run/.worker-1-tmp"]
    assert not any(p.name.startswith(".worker-") for p in (tmp_path / "run").iterdir())
    best_epoch = max(range(2), key=lambda epoch: chief["evaluations"][epoch]["eval_top1"])  # The first if tied.
    best = tf.train.latest_checkpoint(str(tmp_path / "run" / "best"))
    assert best.endswith(f"ckpt-{2 * (best_epoch + 1)}")  # 2 steps per epoch.
    # One process evaluating that checkpoint counts the same examples correct.
    one = training.evaluate(train_and_eval_config(str(tmp_path / "data")), str(tmp_path / "run"), checkpoint_path=best)
    assert one["examples"] == 13 and one["epoch"] == best_epoch + 1
    assert one["top1"] == chief["evaluations"][best_epoch]["eval_top1"]


@pytest.mark.slow
def test_mirrored_mixed_float16_with_loss_scaling_trains_the_single_device_model(tmp_path):
    runs = _local(tmp_path, ["one_fp16", "mirrored_fp16"])
    assert_same_model(runs["one_fp16"], runs["mirrored_fp16"], FLOAT16)
    # The same top-1 up to an example or two of the 1,000: the weights agree to float16's tolerance,
    # not bit for bit, and the 10 logits of a model 6 steps into training are close together, so
    # float16 rounding (~1e-3 relative) can flip a near tie (seen on AVX-512 CPUs).
    assert int(runs["mirrored_fp16"]["eval_examples"]) == int(runs["one_fp16"]["eval_examples"]) == 1000
    assert abs(float(runs["mirrored_fp16"]["eval_top1"]) - float(runs["one_fp16"]["eval_top1"])) <= 2 / 1000


def test_strategy_names():
    assert distribute.resolve_name("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown strategy 'tpus'"):
        distribute.resolve_name("tpus")
    assert distribute.device_kind(tf.distribute.get_strategy()) == "cpu"
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_auto_picks_tpu_when_named_or_on_a_tpu_vm(monkeypatch, tmp_path):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(distribute, "TPU_DEVICE_PATTERNS", (str(tmp_path / "accel[0-9]*"),))
    assert distribute.resolve_name("auto") == "cpu"
    assert distribute.resolve_name("auto", tpu="my-tpu") == "tpu"
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert distribute.resolve_name("auto") == "tpu"
    monkeypatch.delenv("TPU_NAME")
    (tmp_path / "accel0").touch()  # A TPU VM's chip.
    assert distribute.on_tpu_vm() and distribute.resolve_name("auto") == "tpu"
    (tmp_path / "accel0").unlink()
    (tmp_path / "accelerometer").touch()  # Not a TPU chip's device file.
    assert distribute.resolve_name("auto") == "cpu"


def test_auto_picks_multiworker_from_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute.resolve_name("auto") == "multiworker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.resolve_name("auto")
