"""datasets/service.py: training through a tf.data service dispatcher (in process) and two workers (in a
process of their own; one test stops a worker of an in-process cluster mid-epoch); TFRecord shards through
a worker in another process (no Python callbacks there), and no Python callback in the graphs the workers
run."""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

import datasets
from datasets import service
from efficientnetv2.train import training
from hparams import config as config_lib
from tests.datasets_helpers import (jpeg_bytes, make_folder, make_imagenet_dir, smooth_image,
                                    write_imagenet_shards)
from tests.training_helpers import tiny_config

# Short heartbeats and timeouts: the dispatcher notices a stopped worker in about a second.
DISPATCHER = dict(worker_timeout_ms=1000, job_gc_check_interval_ms=1000, job_gc_timeout_ms=1000)
WORKER = dict(heartbeat_interval_ms=100, dispatcher_timeout_ms=5000)


def _cluster():
    dispatcher = service.start_dispatcher(**DISPATCHER)
    address = dispatcher.target
    return dispatcher, [service.start_worker(address, **WORKER) for _ in range(2)]


# Two workers in a process of their own, writing their task counts to a file. Killed at the end:
# in this process, a worker's stop() took 8-113 s at the module's end (it waits for requests in flight),
# and stopping it on a thread instead stalled the next test as long.
WORKERS = """
import json, os, sys, time
from datasets import service
workers = [service.start_worker(sys.argv[1], **json.loads(sys.argv[2])) for _ in range(2)]
while True:
    with open(sys.argv[3] + ".tmp", "w") as f:
        json.dump([w._num_tasks() for w in workers], f)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(dispatcher, tasks): ``tasks()`` gives each worker's number of tasks so far."""
    dispatcher = service.start_dispatcher(**DISPATCHER)
    folder = tmp_path_factory.mktemp("workers")
    counts, log = folder / "tasks.json", folder / "workers.log"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as stderr:  # A file, not a pipe nobody reads: a full pipe would block the workers.
        process = subprocess.Popen([sys.executable, "-c", WORKERS, dispatcher.target, json.dumps(WORKER),
                                    str(counts)], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while dispatcher._num_workers() < 2 or not counts.exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)

        def tasks():
            time.sleep(0.2)  # A fresh count.
            return json.loads(counts.read_text())

        yield dispatcher, tasks
    finally:
        process.kill()
        process.wait()
        dispatcher.stop()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class ShapeRecorder(keras.callbacks.Callback):
    """(epoch, images shape, labels shape) of every batch trained on; optionally calls
    `on_batch(epoch, batch)` after each step."""

    def __init__(self, on_batch=None):
        super().__init__()
        self.batches, self.epoch, self.on_batch, self.patched = [], None, on_batch, False

    def on_train_begin(self, logs=None):
        if self.patched:
            return
        original = self.model.train_step

        def step(data):
            images = data[0][0] if isinstance(data[0], tuple) else data[0]  # (images, mix) with mixup.
            tf.py_function(lambda i, l: self.batches.append(
                (self.epoch, tuple(i.numpy()), tuple(l.numpy()))), [tf.shape(images), tf.shape(data[1])], [])
            return original(data)

        self.model.train_step = step
        self.patched = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.on_batch is not None:
            self.on_batch(self.epoch, batch)


def test_addresses_are_checked_by_the_config_and_the_parser():
    config = tiny_config(**{"data.service_address": "grpc://dispatcher-0.example:5050"})
    config_lib.validate(config)
    assert service.parse_address(config.data.service_address) == ("dispatcher-0.example", 5050)
    for bad in ("localhost:5050", "grpc://localhost", "http://localhost:5050", "grpc://a:b:1"):
        with pytest.raises(config_lib.ConfigError, match="data.service_address.*grpc://HOST:PORT"):
            config_lib.validate(tiny_config(**{"data.service_address": bad}))
        with pytest.raises(ValueError, match="grpc://HOST:PORT"):
            service.parse_address(bad)
    assert config_lib.Config().data.service_address == ""


def test_a_dispatcher_with_a_work_dir_is_fault_tolerant_and_journals_there(tmp_path):
    dispatcher = service.start_dispatcher(work_dir=str(tmp_path / "journal"))
    worker = service.start_worker(dispatcher.target, **WORKER)
    try:
        dataset = service.distribute(tf.data.Dataset.range(5), dispatcher.target, service.job_name(0, 0))
        assert sorted(int(x) for x in dataset) == [0, 1, 2, 3, 4]
    finally:
        worker.stop()
        dispatcher.stop()
    assert os.listdir(tmp_path / "journal")  # What a restarted dispatcher recovers its jobs from.


def test_without_an_address_the_dataset_is_untouched():
    dataset = tf.data.Dataset.range(3)
    assert service.distribute(dataset, "", "unused") is dataset


def test_unreachable_dispatcher_is_a_one_line_error_not_a_hang(tmp_path):
    address = f"grpc://localhost:{_free_port()}"  # Nothing listens there.
    with pytest.raises(service.ServiceUnavailable, match=f"dispatcher {address} is unreachable"):
        service.distribute(tf.data.Dataset.range(3), address, "job")
    with pytest.raises(service.ServiceUnavailable) as raised:  # Checked before the model is built.
        training.train(tiny_config(**{"data.service_address": address}), str(tmp_path), verbose=0)
    assert "\n" not in str(raised.value) and "python -m datasets.service dispatcher" in str(raised.value)
    assert not os.path.exists(tmp_path / "config.yaml")


def test_every_example_once_per_epoch_each_augmented_as_by_its_id(cluster, tmp_path):
    """DYNAMIC sharding over two workers: the epoch's examples, each made once, each with the
    crop/flip/RandAugment of the local pipeline keyed by id; only the order is the service's."""
    dispatcher, _ = cluster
    src = datasets.get_source("auto", make_imagenet_dir(str(tmp_path), train=12, num_shards=4))
    kwargs = dict(batch_size=1, image_size=32, randaug_magnitude=10.0, seed=3, epoch=1, key_examples_by="id")

    def images(dataset):
        return sorted(batch[0].numpy().tobytes() for batch in dataset)

    local = images(datasets.build_train_dataset(src, **kwargs))
    served = images(service.distribute(datasets.build_train_dataset(src, **kwargs), dispatcher.target,
                                       service.job_name(0, 1)))
    assert len(local) == 12 and served == local
    by_position = images(datasets.build_train_dataset(src, **{**kwargs, "key_examples_by": "position"}))
    assert by_position != local  # The keys differ: the comparison above could fail.


def test_progressive_run_through_two_workers_switches_shapes_with_the_stage(cluster, tmp_path):
    dispatcher, tasks = cluster
    tasks_before = tasks()
    recorder = ShapeRecorder()
    config = tiny_config(**{"data.service_address": dispatcher.target, "train.epochs": 2,
                            "train.steps_per_epoch": 2, "progressive.mixup_end": 0.2})
    result = training.train(config, str(tmp_path), verbose=0, callbacks=[recorder])
    # Stage 1 (epoch 0) at 32 px, stage 2 (epoch 1) at 48 px with mixup; batch 8, 10 synthetic classes.
    shapes = {}
    for epoch, images, labels in recorder.batches:
        shapes.setdefault(epoch, set()).add((images, labels))
    assert shapes == {0: {((8, 32, 32, 3), (8, 10))}, 1: {((8, 48, 48, 3), (8, 10))}}
    assert len(recorder.batches) == 2 * 2 and result["epoch"] == 2
    assert (result["logs"]["image_size"], result["logs"]["stage"]) == (48, 2)
    # A job per epoch, with tasks on both workers: the data was made by the service.
    assert all(after - before >= 2 for after, before in zip(tasks(), tasks_before))


def test_a_worker_dying_mid_epoch_keeps_the_checkpoints(tmp_path):
    dispatcher, workers = _cluster()
    config = tiny_config(**{"data.service_address": dispatcher.target, "train.epochs": 3,
                            "train.steps_per_epoch": 4, "progressive.num_stages": 1})
    checkpoints = tmp_path / "checkpoints"
    saved_before_the_kill = []

    def kill_in_epoch_two(epoch, batch):
        if epoch == 1 and batch == 0:
            saved_before_the_kill.extend(sorted(os.listdir(checkpoints)))
            workers[1].stop()

    recorder = ShapeRecorder(on_batch=kill_in_epoch_two)
    try:
        result = training.train(config, str(tmp_path), verbose=0, callbacks=[recorder])
        # The other worker carried on: the rest of epoch 2, and epoch 3 as a new job.
        assert result["epoch"] == 3 and len(recorder.batches) == 3 * 4
    except (tf.errors.OpError, training.DataExhausted) as e:  # Or a clear stop; then nothing is lost.
        assert "epoch 2" in str(e) or "worker" in str(e).lower()
    finally:
        for server in workers + [dispatcher]:
            server.stop()
    assert saved_before_the_kill and set(saved_before_the_kill) <= set(os.listdir(checkpoints))


def _op_names(dataset):
    """Every op in `dataset`'s graph, the functions of its maps, filters and interleaves included."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    return {node.op for node in graph.node} | {
        node.op for function in graph.library.function for node in function.node_def}


@pytest.mark.parametrize("layout", ["imagenet", "folder"])
def test_the_input_graphs_hold_no_python_callback(tmp_path, layout):
    root = str(tmp_path)
    if layout == "imagenet":
        make_imagenet_dir(root, train=4, validation=2)
    else:
        make_folder(os.path.join(root, "train"), {"a": 2, "b": 2})
        make_folder(os.path.join(root, "val"), {"a": 1, "b": 1})
    src = datasets.get_source("auto", root)
    graphs = [datasets.build_train_dataset(src, batch_size=2, image_size=16, randaug_magnitude=5.0,
                                           mixup_alpha=0.2, key_examples_by=key) for key in ("position", "id")]
    graphs.append(datasets.build_eval_dataset(src, batch_size=2, image_size=16))
    for dataset in graphs:
        ops = _op_names(dataset)
        # The walk sees inside the functions of maps and interleaves: it could find a callback.
        assert {"TFRecordDataset" if layout == "imagenet" else "ReadFile", "MapDataset"} <= ops
        assert not {op for op in ops if "PyFunc" in op}


def test_tfrecord_shards_through_a_worker_in_another_process(tmp_path):
    """A worker in a process of its own has none of the trainer's Python callbacks: the pipeline must
    be graph only.  Its damaged shard and undecodable image are skipped and named in that worker's log."""
    root = str(tmp_path / "data")
    images = [jpeg_bytes(smooth_image(i)) for i in range(8)]
    images[2] = b"not an image"
    write_imagenet_shards(root, "train", images, [i % 3 for i in range(8)], num_shards=2)
    write_imagenet_shards(root, "validation", images[:2], [0, 1], num_shards=1)
    src = datasets.get_source("imagenet", root)  # Counted before the damage.
    damaged = os.path.join(root, "train-00001-of-00002")  # Records 1, 3, 5, 7: cut inside the second.
    with open(damaged, "r+b") as f:
        f.truncate(int.from_bytes(f.read(8), "little") + 16 + 20)  # Record = length, CRC, data, CRC.
    dispatcher = service.start_dispatcher(**DISPATCHER)
    log = tmp_path / "worker.log"
    with open(log, "w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "datasets.service", "worker", "--dispatcher", dispatcher.target,
             "--host", "localhost"], stdout=stderr, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while dispatcher._num_workers() < 1:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        counts_before = datasets.skipped_images(), datasets.skipped_shards()
        dataset = service.distribute(
            datasets.build_train_dataset(src, batch_size=1, image_size=16, seed=1, key_examples_by="id"),
            dispatcher.target, service.job_name(0, 0))
        ids = sorted(int(label.numpy().argmax()) for _, label in dataset)
        # The worker counts in its own copy of the counters: this process' counts do not move.
        assert (datasets.skipped_images(), datasets.skipped_shards()) == counts_before
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        dispatcher.stop()
    # Shard 0 (records 0, 2, 4, 6: labels 0, -, 1, 0) but its undecodable record 2; of shard 1 record 1.
    text = log.read_text()
    assert ids == [0, 0, 1, 1], text[-2000:]
    assert f"TFRecord shard {damaged} is corrupt or truncated" in text
    assert f"skipped undecodable image {os.path.join(root, 'train-00000-of-00002')}:1 (" in text
