"""tf.distribute on this CPU: MirroredStrategy over 2 logical devices, and MultiWorkerMirroredStrategy
with 2 worker processes on localhost (TF_CONFIG, loopback ports)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train import distribute
from tests.distributed_worker import ROOT, run_two_workers, worker_env


def test_mirrored_over_two_logical_cpus(tmp_path):
    out = tmp_path / "weights.npz"
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_worker", "mirrored", str(tmp_path / "run"), str(out)],
        env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = np.load(out)
    assert int(data["replicas"]) == 2 and int(data["epoch"]) == 2
    assert all(np.isfinite(data[k]).all() for k in data.files if k.startswith("w"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").exists()


def test_multiworker_two_processes_end_with_identical_weights(tmp_path):
    results = run_two_workers(lambda index: ["multiworker", str(tmp_path / "run"), str(tmp_path / f"w{index}.npz")])
    for returncode, err in results:
        assert returncode == 0, err[-4000:]
    a, b = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(a["replicas"]) == 2 and int(a["epoch"]) == 2
    weight_keys = [k for k in a.files if k.startswith("w")]
    for key in weight_keys:
        np.testing.assert_array_equal(a[key], b[key])
    # Only the chief wrote the checkpoint; the other worker's temporary folder is gone.
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").exists()
    assert not any(p.name.startswith(".worker-") for p in (tmp_path / "run").iterdir())


def test_strategy_names():
    assert distribute.resolve_name("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown strategy 'tpus'"):
        distribute.resolve_name("tpus")
    assert distribute.device_kind(tf.distribute.get_strategy()) == "cpu"
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_auto_picks_multiworker_from_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute.resolve_name("auto") == "multiworker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.resolve_name("auto")
