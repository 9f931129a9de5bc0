"""Training input pipeline throughput on real JPEGs (a benchmark, not a test).

    python benchmarks/input_pipeline.py [--tfrecord_dir DIR] [--num_batches 20] [--batch_size 64]

Converts ../shared/data/imagenette to TFRecords with `datasets.build_tfrecords` (into a temporary
folder, or into/from --tfrecord_dir), then times, at each --image_sizes:

- ours, no RandAugment: decode-and-crop + resize + flip, batched (the floor);
- ours, full: the above + our RandAugment (2 ops, m=--magnitude) + mixup (--mixup_alpha), i.e.
  `datasets.build_train_dataset`;
- keras.layers.RandAugment and keras_cv.layers.RandAugment applied to the same decoded, cropped,
  flipped batches (factor / magnitude = m / 30 on their 0-1 scale, 2 ops).

Throughput is images per wall second, and images per CPU-second of this process (user + system
time of all its threads): the per-core figure, fair when the machine is shared.  The first
--warmup_batches of each pipeline are not timed; the Keras baselines, far slower, time
--baseline_batches after one warm-up batch.

With --compare_with REV (a git revision) it times instead the full pipeline as it was at REV
against today's, side by side in this process: REV's `datasets/` modules of the per-example and
batch work (pipeline, decode, randaugment, mixing, skipping) are loaded from `git show` through a
temporary folder, and the two pipelines alternate in --rounds ABBA rounds, each a fresh iterator
timed after its warm-up, so that other load on the machine falls on both alike.

With --service_workers 0,1,2 it also times the full pipeline through tf.data service
(`datasets.service`, DYNAMIC sharding, as training with data.service_address does): a dispatcher in
this process and N worker processes (`python -m datasets.service worker`) on this machine; 0 is
the pipeline without the service.  The CPU seconds are then split: this process (the trainer's
host) and the worker processes.
"""

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import tensorflow as tf  # noqa: E402

import datasets  # noqa: E402
from benchmarks import report  # noqa: E402
from datasets import build_tfrecords, service  # noqa: E402

IMAGENETTE = report.IMAGENETTE


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def measure(dataset: tf.data.Dataset, num_batches: int, warmup_batches: int):
    """(images, wall seconds, CPU seconds) over num_batches after warmup_batches."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    images = 0
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(num_batches):
        images += int(tf.nest.flatten(next(iterator))[0].shape[0])
    return images, time.perf_counter() - wall, _cpu_seconds() - cpu


def cropped_batches(src, batch_size: int, image_size: int) -> tf.data.Dataset:
    """Our decode + crop + flip, no RandAugment, no mixing: the input of the Keras baselines."""
    return datasets.build_train_dataset(src, batch_size=batch_size, image_size=image_size,
                                        randaug_magnitude=0)


def with_layer(dataset: tf.data.Dataset, layer) -> tf.data.Dataset:
    return dataset.map(lambda images, labels: (layer(tf.cast(images, tf.float32), training=True), labels),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pipelines(src, args, image_size: int):
    """(name, dataset, timed batches, warm-up batches) to time at image_size."""
    factor = args.magnitude / 30.0
    ours = (args.num_batches, args.warmup_batches)
    yield ("ours: decode+crop+flip", cropped_batches(src, args.batch_size, image_size), *ours)
    yield (f"ours: + RandAugment(m={args.magnitude:g}) + mixup({args.mixup_alpha:g})",
           datasets.build_train_dataset(src, batch_size=args.batch_size, image_size=image_size,
                                        randaug_magnitude=args.magnitude,
                                        mixup_alpha=args.mixup_alpha), *ours)
    if args.skip_baselines:
        return
    baseline = (args.baseline_batches, 1)
    import keras
    yield (f"keras.layers.RandAugment(factor={factor:.2f})",
           with_layer(cropped_batches(src, args.batch_size, image_size),
                      keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=factor, seed=0)),
           *baseline)
    import keras_cv
    yield (f"keras_cv.layers.RandAugment(magnitude={factor:.2f})",
           with_layer(cropped_batches(src, args.batch_size, image_size),
                      keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2,
                                                  magnitude=factor, seed=0)),
           *baseline)


COMPARED_MODULES = ("decode", "randaugment", "mixing", "skipping", "pipeline")  # in import order


def pipeline_at(revision: str, folder: str):
    """`datasets.pipeline` as it was at git `revision`, with that revision's COMPARED_MODULES (the
    others are today's): written into `folder` and imported from there, so that autograph can read
    their source."""
    modules = {}
    for name in COMPARED_MODULES:
        source = subprocess.run(["git", "show", f"{revision}:datasets/{name}.py"], cwd=REPO_ROOT,
                                check=True, capture_output=True, text=True).stdout
        path = os.path.join(folder, f"{name}_at_revision.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"datasets_at_revision_{name}", path)
        # Registered in sys.modules: autograph looks a function's module up there.
        modules[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    pipeline = modules["pipeline"]
    for name in ("decode", "randaugment", "mixing"):
        setattr(pipeline, name, modules[name])
    pipeline.map_skipping_errors = modules["skipping"].map_skipping_errors
    return pipeline


def compare(src, args, image_size: int, old_pipeline, table, rep):
    """Rows for the full pipeline at --compare_with and today, timed in alternating ABBA rounds."""
    def build(module):
        return module.build_train_dataset(src, batch_size=args.batch_size, image_size=image_size,
                                          randaug_magnitude=args.magnitude,
                                          mixup_alpha=args.mixup_alpha)

    built = {f"at {args.compare_with}": build(old_pipeline), "today": build(datasets.pipeline)}
    totals = {name: [0, 0.0, 0.0] for name in built}
    for round_ in range(args.rounds):
        for name in (list(built) if round_ % 2 == 0 else list(reversed(built))):
            for i, value in enumerate(measure(built[name], args.num_batches, args.warmup_batches)):
                totals[name][i] += value
    per_cpu = {}
    for name, (images, wall, cpu) in totals.items():
        per_cpu[name] = images / cpu
        label = f"ours {name}: + RandAugment(m={args.magnitude:g}) + mixup({args.mixup_alpha:g})"
        table.add(label, image_size, f"{images / wall:.0f}", f"{cpu:.1f}", f"{per_cpu[name]:.0f}")
    old, new = per_cpu.values()
    rep.note(f"Today / at {args.compare_with}: x{new / old:.2f} images per CPU-second at {image_size} px "
             f"({args.rounds} ABBA rounds of {args.num_batches} batches).")
    train_step_mixing(built["today"], image_size, rep)


def train_step_mixing(dataset: tf.data.Dataset, image_size: int, rep, repeats: int = 20):
    """Prints what the train step's cast and mixing (`datasets.mixing.mixed_images`) cost on this
    CPU: the part of the augmentation that today's pipeline leaves to the device, paid by the host
    only when it trains on the CPU."""
    x, _ = next(iter(dataset))
    mixed = tf.function(datasets.mixing.mixed_images)
    mixed(x)
    cpu = _cpu_seconds()
    for _ in range(repeats):
        mixed(x)
    per_image = (_cpu_seconds() - cpu) / (repeats * int(tf.nest.flatten(x)[0].shape[0]))
    rep.note(f"The train step's cast + mixup of today's batches, on this CPU: {per_image * 1e3:.2f} ms "
             f"of CPU per image at {image_size} px (on a GPU/TPU it runs there).")


def _process_cpu_seconds(pids) -> float:
    """User + system CPU seconds of processes `pids` so far (from /proc; 0 where unreadable)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


@contextlib.contextmanager
def local_service(num_workers: int):
    """(dispatcher address or "" for none, worker pids): a dispatcher here, worker processes."""
    if num_workers == 0:
        yield "", []
        return
    dispatcher = service.start_dispatcher()
    host_port = dispatcher.target.removeprefix("grpc://")
    workers = [subprocess.Popen([sys.executable, "-m", "datasets.service", "worker", "--dispatcher",
                                 host_port, "--host", "localhost"], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(num_workers)]
    try:
        deadline = time.monotonic() + 120
        while dispatcher._num_workers() < num_workers:  # No public accessor; TF's tests use this one.
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"{num_workers} tf.data service workers did not register")
            time.sleep(0.2)
        yield dispatcher.target, [w.pid for w in workers]
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait()
        dispatcher.stop()


def time_service(src, args, image_size: int, table):
    """Rows of the full pipeline with 0, 1, 2... local tf.data service workers, as training
    builds it (the epoch repeated on the workers, keyed by example id).

    `src` is the JPEG folder (`--images`), as when these figures were first measured; TFRecords run on
    workers in other processes too (the input graph holds no Python function).
    """
    for num_workers in (int(n) for n in args.service_workers.split(",")):
        with local_service(num_workers) as (address, pids):
            dataset = datasets.build_train_dataset(src, batch_size=args.batch_size, image_size=image_size,
                                                   randaug_magnitude=args.magnitude,
                                                   mixup_alpha=args.mixup_alpha,
                                                   key_examples_by="id" if address else "position")
            dataset = service.distribute(dataset.repeat(), address, service.job_name(0, 0))
            before = _process_cpu_seconds(pids)
            images, wall, cpu = measure(dataset, args.num_batches, args.warmup_batches)
            workers_cpu = _process_cpu_seconds(pids) - before
        table.add(num_workers, image_size, f"{images / wall:.0f}", f"{cpu:.1f}", f"{workers_cpu:.1f}",
                  f"{images / (cpu + workers_cpu):.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=IMAGENETTE, help="folder of class sub-folders")
    parser.add_argument("--tfrecord_dir", default=None,
                        help="reuse (or write) the converted shards here; default: a temp folder")
    parser.add_argument("--image_sizes", default="128,300")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--warmup_batches", type=int, default=3)
    parser.add_argument("--baseline_batches", type=int, default=4,
                        help="timed batches of the Keras baselines (after 1 warm-up; they are slow)")
    parser.add_argument("--magnitude", type=float, default=15.0)
    parser.add_argument("--mixup_alpha", type=float, default=0.2)
    parser.add_argument("--skip_baselines", action="store_true",
                        help="time only this package's pipeline")
    parser.add_argument("--compare_with", default="",
                        help="a git revision: also time the full pipeline as it was there against "
                             "today's, alternating (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="ABBA rounds of --num_batches each for --compare_with")
    parser.add_argument("--service_workers", default="",
                        help="e.g. 0,1,2: also time the full pipeline through tf.data service with "
                             "this many local worker processes (0: without the service)")
    args = parser.parse_args()
    rep = report.Report("Input pipeline", __file__, batch_size=args.batch_size,
                        timed_batches=f"ours {args.num_batches} after {args.warmup_batches}, Keras baselines "
                                      f"{args.baseline_batches} after 1",
                        augmentation=f"RandAugment m={args.magnitude:g}, mixup {args.mixup_alpha:g}")

    with tempfile.TemporaryDirectory() as scratch:
        tfrecord_dir = args.tfrecord_dir or os.path.join(scratch, "tfrecords")
        if not tf.io.gfile.glob(os.path.join(tfrecord_dir, "train-*")):
            if not os.path.isdir(args.images):
                print(f"no images at {args.images}: nothing to benchmark", file=sys.stderr)
                return 1
            start = time.perf_counter()
            counts = build_tfrecords.convert(args.images, tfrecord_dir)
            print(f"converted {counts} from {args.images} in {time.perf_counter() - start:.0f} s")
        src = datasets.get_source("imagenet", tfrecord_dir)

        cores = len(os.sched_getaffinity(0))
        print(f"TensorFlow {tf.__version__}, {cores} CPU cores available to this process "
              f"(tf.data uses its default thread pool: one thread per core), batch "
              f"{args.batch_size}; timed batches after warm-up: ours {args.num_batches} after "
              f"{args.warmup_batches}, Keras baselines {args.baseline_batches} after 1; "
              f"{src.num_examples('train')} imagenette JPEGs (~224x224) in TFRecords")
        table = rep.table(["pipeline", "size", "images/s", "CPU s", "images per CPU-second"],
                          f"{src.num_examples('train')} imagenette JPEGs (~224x224) in TFRecords; tf.data's "
                          "default thread pool (one thread per core).")
        old_pipeline = pipeline_at(args.compare_with, scratch) if args.compare_with else None
        for image_size in (int(s) for s in args.image_sizes.split(",")):
            if old_pipeline:
                compare(src, args, image_size, old_pipeline, table, rep)
                continue
            for name, dataset, batches, warmup in pipelines(src, args, image_size):
                images, wall, cpu = measure(dataset, batches, warmup)
                table.add(name, image_size, f"{images / wall:.0f}", f"{cpu:.1f}", f"{images / cpu:.0f}")
        if args.service_workers:
            service_table = rep.table(
                ["service workers", "size", "images/s", "trainer process CPU s", "workers CPU s",
                 "images per CPU-second, all processes"],
                f"Ours, full, from the JPEG folder (not TFRecords), through tf.data service (DYNAMIC sharding; "
                f"dispatcher in this process, workers local processes sharing these {cores} cores).")
            for image_size in (int(s) for s in args.image_sizes.split(",")):
                time_service(datasets.get_source("auto", args.images), args, image_size, service_table)
    rep.note(f"Skipped undecodable images: {datasets.skipped_images()}.")
    rep.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
