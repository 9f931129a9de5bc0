"""Run by tests/test_distribute.py in a subprocess: trains the tiny model under a strategy.

Usage: python -m tests.distributed_worker <mirrored|multiworker> <model_dir> <out.npz>
(multiworker reads TF_CONFIG). Writes the final weights to out.npz.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(kind, model_dir, out):
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from efficientnetv2 import training
    from tests.training_helpers import tiny_config

    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 2, "model.synchronized_bn": True})
    result = training.train(config, model_dir, strategy, verbose=0)
    weights = {f"w{i}": np.array(w) for i, w in enumerate(result["model"].weights)}
    np.savez(out, replicas=strategy.num_replicas_in_sync, epoch=result["epoch"], **weights)
    print("DONE", strategy.num_replicas_in_sync, result["epoch"])


if __name__ == "__main__":
    main(*sys.argv[1:4])
