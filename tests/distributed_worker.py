"""Run by tests/test_distribute.py and tests/test_keras_compat.py in subprocesses.

Usage: python -m tests.distributed_worker equivalence-local <dir> <run,run,...> trains the same tiny
run on one device and/or under MirroredStrategy over 2 logical CPUs (LOCAL_RUNS), and
``equivalence-multiworker <dir> <index>`` as one of 2 MultiWorkerMirroredStrategy workers (TF_CONFIG),
writing what tests/test_distribute.py compares to <dir>/<run>.npz. ``train-and-eval <dir> <index>``
trains ``train_and_eval_config`` with an evaluation after each epoch as one of 2 workers, on the
TFRecord folder ``<dir>/data`` (``make_uneven_eval_data``), into ``<dir>/run``. ``keras-canary <out.json>`` fits a
plain Keras model under MultiWorkerMirroredStrategy without, then with, the workarounds of
efficientnetv2.train.keras_compat and writes what each fit did to out.json. ``run_two_workers`` starts 2 such workers on localhost.
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


def equivalence_config(synchronized_bn=True, precision="float32", **overrides):
    """The tiny run the equivalence tests train under every strategy: 2 epochs of 3 steps over a stage
    boundary, no dropout and no stochastic depth (their masks are drawn per replica, so they cannot
    match a single device's draw: that is expected, not a bug), no mixup (it pairs examples within a
    replica's batch)."""
    from tests.training_helpers import tiny_config

    settings = {"train.epochs": 2, "progressive.num_stages": 2, "model.drop_path_rate": 0.0,
                "progressive.dropout_start": 0.0, "progressive.dropout_end": 0.0, "progressive.mixup_start": 0.0,
                "progressive.mixup_end": 0.0, "model.synchronized_bn": synchronized_bn,
                "train.mixed_precision": precision, "eval.steps": None, "eval.batch_size": 16}
    settings.update(overrides)
    return tiny_config(**settings)


def _first_step_images(strategy, config):
    """This worker's replicas' images of the run's first global step, in replica order."""
    import datasets
    from efficientnetv2.train import loop, training

    source = datasets.get_source(config.data.dataset, config.data.data_dir)
    plan = training.make_plan(config, source, strategy.num_replicas_in_sync)
    images, _ = next(iter(loop._epoch_data(config, plan, source, strategy)(plan.stages[0], 0)))
    return [np.array(x) for x in strategy.experimental_local_results(images)]


def run_equivalence(strategy, model_dir, config):
    """Trains ``config`` under ``strategy``, then evaluates the final checkpoint under it; returns the
    arrays the tests compare (weights, EMA weights and optimizer variables by path, eval top-1, the
    first step's images per replica)."""
    import keras

    import datasets
    from efficientnetv2.io import checkpointing
    from efficientnetv2.train import training
    from efficientnetv2.train.evaluation import evaluate_model

    result = training.train(config, model_dir, strategy, verbose=0)
    model, optimizer = result["model"], result["optimizer"]
    arrays = {f"weight:{w.path}": np.array(w) for w in model.weights}
    arrays.update({f"ema:{path}": np.array(v) for path, v in checkpointing.ema_variables(model, optimizer).items()})
    # Optimizer variables by position (a second optimizer in one process gets another name prefix).
    arrays.update({f"slot:{i:04d}:{v.path.split('/', 1)[-1]}": np.array(v) for i, v in enumerate(optimizer.variables)})
    # The final checkpoint's model, evaluated as training.evaluate does (EMA weights, the eval size),
    # without building it anew.
    source = datasets.get_source(config.data.dataset, config.data.data_dir)
    evaluation = evaluate_model(model, optimizer, strategy, source, result["plan"], config.eval)
    assert evaluation["ema"]
    arrays["eval_top1"] = np.array(evaluation["top1"])
    arrays["eval_examples"] = np.array(evaluation["examples"])
    arrays["replicas"] = np.array(strategy.num_replicas_in_sync)
    for index, images in enumerate(_first_step_images(strategy, config)):
        arrays[f"images:{index}"] = images
    keras.config.set_dtype_policy("float32")
    return arrays


def make_uneven_eval_data(directory):
    """A 3-class TFRecord folder whose validation split cannot be split evenly over 2 workers: 13
    records in 3 shards of 5, 4 and 4, so one worker reads 9 and the other 4 (shards go to workers
    whole, see ``datasets.ordering.shard_files``); with 2 examples per replica a step, the first worker
    has 5 batches (the last of 1 example) and the second 2. Returns ``directory``."""
    from datasets import records
    from tests.datasets_helpers import jpeg_bytes, smooth_image, write_imagenet_shards

    for split, count, shards, offset in (("train", 32, 2, 0), ("validation", 13, 3, 500)):
        write_imagenet_shards(directory, split, [jpeg_bytes(smooth_image(offset + i)) for i in range(count)],
                              [i % 3 for i in range(count)], num_shards=shards)
    records.write_labels_file(directory, ["a", "b", "c"])
    return directory


def train_and_eval_config(data_dir):
    """2 epochs of 2 steps on ``make_uneven_eval_data``, a full evaluation (global batch 4) after each."""
    return equivalence_config(**{"data.dataset": "imagenet", "data.data_dir": data_dir, "train.steps_per_epoch": 2,
                                 "eval.batch_size": 4})


def train_and_eval_multiworker(work_dir, index):
    """``main.py --mode=train_and_eval`` as worker ``index`` of 2: ``training.train`` with an evaluation
    after each epoch. Writes to ``<work_dir>/worker_<index>.json`` this worker's evaluations, the
    folders it saved checkpoints into, and how many validation examples its own input pipeline holds."""
    import datasets
    from efficientnetv2.io import checkpointing
    from efficientnetv2.train import distribute, evaluation, training

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    evaluations, saved_into = [], []
    evaluate_and_keep, save_checkpoint = evaluation.BestCheckpoint.evaluate_and_keep, checkpointing.save_checkpoint

    def recorded_evaluation(self, *args, **kwargs):
        evaluations.append(evaluate_and_keep(self, *args, **kwargs))
        return evaluations[-1]

    def recorded_save(manager, *args, **kwargs):
        saved_into.append(os.path.relpath(manager.directory, work_dir))
        return save_checkpoint(manager, *args, **kwargs)

    evaluation.BestCheckpoint.evaluate_and_keep = recorded_evaluation
    checkpointing.save_checkpoint = recorded_save
    config = train_and_eval_config(os.path.join(work_dir, "data"))
    result = training.train(config, os.path.join(work_dir, "run"), strategy, evaluate_each_epoch=True, verbose=0)
    source = datasets.get_source("imagenet", config.data.data_dir)
    own = datasets.build_eval_dataset(source, batch_size=2, image_size=32,
                                      input_context=tf.distribute.InputContext(2, index, 2))
    with open(os.path.join(work_dir, f"worker_{index}.json"), "w", encoding="utf-8") as f:
        json.dump({"chief": distribute.is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
                   "epoch": result["epoch"], "evaluations": evaluations, "saved_into": sorted(set(saved_into)),
                   "own_eval_examples": int(sum(len(labels) for _, labels in own))}, f)
    print("DONE", index)


# The runs of ``equivalence-local``: (strategy, config overrides of equivalence_config).
LOCAL_RUNS = {
    "one": ("one", {}),
    "mirrored": ("mirrored", {}),
    "mirrored_unsynced": ("mirrored", {"synchronized_bn": False}),
    "one_fp16": ("one", {"precision": "mixed_float16"}),
    "mirrored_fp16": ("mirrored", {"precision": "mixed_float16"}),
}


def equivalence_local(work_dir, names):
    """The named LOCAL_RUNS, on one device or under MirroredStrategy over 2 logical CPUs, in this
    process; one ``<name>.npz`` each."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    strategies = {"one": tf.distribute.get_strategy(), "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
    for name in names:
        kind, overrides = LOCAL_RUNS[name]
        arrays = run_equivalence(strategies[kind], os.path.join(work_dir, name), equivalence_config(**overrides))
        np.savez(os.path.join(work_dir, f"{name}.npz"), **arrays)
    print("DONE", names)


def equivalence_multiworker(work_dir, index):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    arrays = run_equivalence(strategy, os.path.join(work_dir, "multiworker"), equivalence_config())
    np.savez(os.path.join(work_dir, f"multiworker_{index}.npz"), **arrays)
    print("DONE", strategy.num_replicas_in_sync)


if __name__ == "__main__":
    if sys.argv[1] == "keras-canary":
        keras_canary(sys.argv[2])
    elif sys.argv[1] == "equivalence-local":
        equivalence_local(sys.argv[2], sys.argv[3].split(","))
    elif sys.argv[1] == "equivalence-multiworker":
        equivalence_multiworker(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "train-and-eval":
        train_and_eval_multiworker(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
