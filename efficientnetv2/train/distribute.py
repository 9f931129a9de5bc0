"""Choosing the ``tf.distribute`` strategy: one code path for CPU, GPUs, TPU and several hosts.

- ``tpu``: ``TPUStrategy`` from a ``TPUClusterResolver`` (``--tpu`` names the TPU or its address;
  empty on a TPU VM). Cannot run on this project's CI; it is the same trainer with another strategy.
- ``gpus``: ``MirroredStrategy`` over the local GPUs.
- ``multiworker``: ``MultiWorkerMirroredStrategy``; the cluster comes from ``TF_CONFIG``.
- ``cpu``: the default strategy (one replica).
- ``auto``: ``multiworker`` when ``TF_CONFIG`` names more than one worker, else ``tpu`` when a TPU is
  named (``--tpu`` or the ``TPU_NAME`` environment variable, which TensorFlow's resolver reads) or this
  is a TPU VM (its chips' device files, ``/dev/accel*`` up to v4, ``/dev/vfio/<n>`` from v5, exist),
  else ``gpus`` when GPUs are visible, else ``cpu``. TensorFlow's resolver also asks the GCE metadata
  server for a TPU; ``auto`` does not, so that starting on a machine without network stays instant.
"""

import glob
import json
import os

import tensorflow as tf

__all__ = ["STRATEGIES", "get_strategy", "device_kind", "batches_per_step"]

STRATEGIES = ("auto", "cpu", "gpus", "tpu", "multiworker")


def _tf_config_workers():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


# The device files of a TPU VM's own chips: /dev/accel0.. (v2-v4), /dev/vfio/0.. (v5e, v5p, v6e).
TPU_DEVICE_PATTERNS = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def on_tpu_vm():
    """True on a TPU VM: the host's TPU chips are local devices (``TPUClusterResolver(tpu="local")``)."""
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_PATTERNS)


def resolve_name(name, tpu=""):
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}")
    if name != "auto":
        return name
    if _tf_config_workers() > 1:
        return "multiworker"
    if tpu or os.environ.get("TPU_NAME") or on_tpu_vm():
        return "tpu"
    if tf.config.list_physical_devices("GPU"):
        return "gpus"
    return "cpu"


def get_strategy(name="auto", tpu=""):
    """The strategy for ``name`` (see module docstring)."""
    name = resolve_name(name, tpu)
    if name == "tpu":
        # Named (--tpu or TPU_NAME): the resolver finds it; otherwise the chips of this TPU VM.
        if not tpu and not os.environ.get("TPU_NAME") and on_tpu_vm():
            tpu = "local"
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "gpus":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def device_kind(strategy):
    """"tpu", "gpu" or "cpu": what the replicas run on (for precision and XLA defaults)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        devices = ()
    if any("GPU" in d.upper() for d in devices) or (
        not devices and tf.config.list_physical_devices("GPU")
    ):
        return "gpu"
    return "cpu"


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def batches_per_step(context):
    """Per-replica batches one input pipeline feeds per step: its worker's replicas each take one."""
    return max(1, context.num_replicas_in_sync // context.num_input_pipelines)
