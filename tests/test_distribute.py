"""tf.distribute on this CPU: MirroredStrategy over 2 logical devices, and MultiWorkerMirroredStrategy
with 2 worker processes on localhost (TF_CONFIG, loopback ports)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_over_two_logical_cpus(tmp_path):
    out = tmp_path / "weights.npz"
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_worker", "mirrored", str(tmp_path / "run"), str(out)],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = np.load(out)
    assert int(data["replicas"]) == 2 and int(data["epoch"]) == 2
    assert all(np.isfinite(data[k]).all() for k in data.files if k.startswith("w"))
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").exists()


def test_multiworker_two_processes_end_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.distributed_worker", "multiworker", str(tmp_path / "run"),
             str(tmp_path / f"w{index}.npz")],
            env=_env(TF_CONFIG=tf_config), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
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
