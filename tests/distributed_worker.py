"""Run by tests/test_distribute.py and tests/test_keras_compat.py in subprocesses.

Usage: python -m tests.distributed_worker <mirrored|multiworker> <model_dir> <out.npz>
trains the tiny model under a strategy (multiworker reads TF_CONFIG) and writes the final weights to
out.npz. python -m tests.distributed_worker keras-canary <out.json> fits a plain Keras model under
MultiWorkerMirroredStrategy without, then with, the workarounds of efficientnetv2.train.keras_compat and
writes what each fit did to out.json. ``run_two_workers`` starts 2 such workers on localhost.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_env(**extra):
    """The environment of a worker subprocess: this checkout on the path, no inherited TF_CONFIG."""
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


def run_two_workers(args_of_worker, timeout=600):
    """Runs ``python -m tests.distributed_worker <args_of_worker(index)>`` as workers 0 and 1 of a
    2-worker cluster on localhost (TF_CONFIG, loopback ports); returns [(returncode, stderr)]."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.distributed_worker", *args_of_worker(index)],
            env=worker_env(TF_CONFIG=tf_config), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        ))
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def train(kind, model_dir, out):
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from efficientnetv2.train import training
    from tests.training_helpers import tiny_config

    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 2, "model.synchronized_bn": True})
    result = training.train(config, model_dir, strategy, verbose=0)
    weights = {f"w{i}": np.array(w) for i, w in enumerate(result["model"].weights)}
    np.savez(out, replicas=strategy.num_replicas_in_sync, epoch=result["epoch"], **weights)
    print("DONE", strategy.num_replicas_in_sync, result["epoch"])


def keras_canary(out):
    """Fits a plain Keras model three times: as is, with the symbolic build only, with both
    workarounds. Each fit's outcome ("trained" or the error's first line) goes to ``out``."""
    import keras

    from efficientnetv2.train import keras_compat

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    data = tf.data.Dataset.from_tensors((tf.ones((4,)), tf.zeros((2,)))).repeat().batch(4).with_options(options)
    batch = (keras.KerasTensor((1, 4), "float32"), keras.KerasTensor((1, 2), "float32"))

    def fit(*workarounds):
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
            model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
            for apply in workarounds:
                apply(model)
        try:
            model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        except Exception as e:  # noqa: BLE001 (the canary reports whichever error Keras raises)
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return "trained"

    outcomes = {
        "multi_worker": keras_compat.multi_worker(strategy),
        "plain": fit(),
        "symbolic_build_only": fit(lambda m: keras_compat.build_compiled_from_symbolic_batch(m, batch)),
        "both": fit(lambda m: keras_compat.fix_multi_worker_fit(m, strategy, batch)),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(outcomes, f)
    print("DONE", outcomes)


if __name__ == "__main__":
    if sys.argv[1] == "keras-canary":
        keras_canary(sys.argv[2])
    else:
        train(*sys.argv[1:4])
