"""Start-up on ImageNet-sized data: seconds from `main.py` start to the first training step, and the
bytes it reads, against the number of records (a benchmark, not a test).

    python benchmarks/startup.py [--work_dir DIR] [--restarts 3] [--no_renamed]

Writes ImageNet-shaped TFRecord shard sets (every record the same 16x16 JPEG, labels 1..1000 in turn,
in the format of `datasets.records`; each label's record is serialized once and its bytes copied)
into --work_dir (default: a temporary folder, removed after):

- "standard": the standard names and counts, 1,024 train shards `train-%05d-of-01024` holding
  1,281,167 records and 128 `validation-%05d-of-00128` holding 50,000, dealt as the reference
  converters deal them (1,251-1,252 and 390-391 a shard): start-up takes the known counts;
- "1/10": the same names with a tenth of the records: not the standard counts, so the first start
  counts them once and caches the count in the run folder (`data_counts.json`);
- "renamed" (unless --no_renamed): the standard set's files hard-linked under other names
  (`train-%05d-of-01024.tfrecord`): full size, counted on the first start;
- "synthetic": the built-in data, no files: the floor (imports, model, tracing, the first step).

Each set gets a first start, then --restarts restarts (after a preemption: the same command and run
folder; the counts come from the run folder), the sets' restarts interleaved in alternating order, as
the load of a shared machine drifts. The run is tiny (B0 at width and depth 0.25, 32 px, batch 8,
one stage, `--strategy=cpu`), so what is measured is start-up: flags, config, data source, model,
restore, the input pipeline and the first step (tracing included). The child runs `main.py` through
this file (`--child`), which adds one Keras callback: at the end of the first training step it notes
the time and the process' `/proc/self/io` (`read_bytes`: bytes fetched from storage; `rchar`: bytes
read by read calls, page-cache hits and libraries included), then sends the process SIGTERM, as a
preemption notice does: the run saves a checkpoint after its next step and exits. An `atexit` hook
notes `/proc/self/io` again just before the process exits. Seconds are from just before the parent
starts the child (fork and exec included) to the end of the first step. Before every start the
shards are dropped from the page cache (`posix_fadvise(DONTNEED)` after `fsync`; no privileges
needed), so `read_bytes` counts the data read; libraries and Python files stay cached.

Goal (issue 14): time and bytes read up to the first step do not grow with the number of records
(standard vs 1/10), and under 30 s to the first step on this machine.

ImageNet-21k has no standard layout with known counts here: it has no official split, and no shard
layout with exact record counts is documented for it (releases differ). Its shards are counted on a
run's first start and the count is cached like the "1/10" and "renamed" sets'.
"""

import argparse
import atexit
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO_ROOT, "main.py")
LABELS = 1000
IMAGENET = {"train": (1024, 1_281_167), "validation": (128, 50_000)}
REPORT_ENV = "STARTUP_BENCHMARK_REPORT"
MARKER = ".startup-benchmark"  # In a --work_dir whose folders this benchmark wrote.

# B0 at a quarter width and depth, 32 px, batch 8, one stage; an epoch longer than every start
# together (each stops after its second step), so every restart has steps left.
HPARAMS = ",".join([
    "model.width=0.25", "model.depth=0.25", "model.head_filters=64",
    "train.epochs=1", "train.steps_per_epoch=1000", "train.batch_size=8",
    "progressive.num_stages=1", "progressive.image_size_start=32", "progressive.image_size_end=32",
    "eval.image_size=32", "eval.batch_size=8", "eval.steps=1",
])

# What the log says about where each count came from (datasets/tfrecord.py).
_COUNT_SOURCES = (("standard ImageNet-1k layout of", "standard layout"),
                  ("counted before, cached in", "cached"), ("counting ", "counted"))


# -- The data. ----------------------------------------------------------------------------------

def framed_records(image_size: int = 16) -> list:
    """The TFRecord bytes (framing and CRCs included) of one record per label 0..999 (stored 1..1000):
    written once by TFRecordWriter, then copied as bytes."""
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, REPO_ROOT)
    from datasets import records

    ramp = np.linspace(0, 255, image_size * image_size * 3).astype("uint8").reshape(image_size, image_size, 3)
    jpeg = tf.io.encode_jpeg(ramp, quality=75).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records")
        with tf.io.TFRecordWriter(path) as writer:
            for label in range(LABELS):
                writer.write(records.imagenet_example(jpeg, label, height=image_size, width=image_size)
                             .SerializeToString())
        with open(path, "rb") as f:
            data = f.read()
    framed, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        end = offset + 8 + 4 + length + 4  # Length, its CRC, the record, its CRC.
        framed.append(data[offset:end])
        offset = end
    return framed


def shard_ranges(count: int, shards: int) -> list:
    """[start, end) of each shard's records: `count` dealt in order, as evenly as can be (1,281,167 in
    1,024 shards: 1,251 or 1,252 each, as the reference converters deal them)."""
    return [(i * count // shards, (i + 1) * count // shards) for i in range(shards)]


def write_shard_set(directory: str, counts: dict, framed: list) -> list:
    """Shards `{split}-%05d-of-%05d` in `directory`, `counts[split] = (shards, records)`, record i of
    a split labelled i % 1000 (+1 stored). Returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for split, (shards, count) in counts.items():
        for index, (start, end) in enumerate(shard_ranges(count, shards)):
            path = os.path.join(directory, f"{split}-{index:05d}-of-{shards:05d}")
            with open(path, "wb") as f:
                f.write(b"".join(framed[i % LABELS] for i in range(start, end)))
            paths.append(path)
    return paths


def link_renamed(paths: list, directory: str) -> list:
    """Hard links of `paths` in `directory`, named `<name>.tfrecord`: the same data under names that are
    not the standard layout's."""
    os.makedirs(directory, exist_ok=True)
    links = [os.path.join(directory, os.path.basename(p) + ".tfrecord") for p in paths]
    for path, link in zip(paths, links):
        os.link(path, link)
    return links


def drop_from_page_cache(paths: list) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # Dirty pages are not dropped.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- One start. ---------------------------------------------------------------------------------

def read_io(pid="self") -> dict:
    """`/proc/<pid>/io` as a dict of ints (read_bytes, rchar, ...)."""
    with open(f"/proc/{pid}/io") as f:
        return {key: int(value) for key, value in (line.split(":") for line in f if ":" in line)}


def main_args(data_dir: Optional[str], model_dir: str) -> list:
    """The command of one start: `data_dir` None is the built-in synthetic data (no files)."""
    data = ["--dataset=imagenet", f"--data_dir={data_dir}"] if data_dir else ["--dataset=synthetic"]
    return ["--mode=train", "--model=b0", *data, f"--model_dir={model_dir}", "--strategy=cpu",
            f"--hparams={HPARAMS}"]


def _note(event: str) -> None:
    io = read_io()
    with open(os.environ[REPORT_ENV], "a") as f:
        f.write(f"{event} {time.time():.6f} {io['read_bytes']} {io['rchar']}\n")


def child(args: list) -> None:
    """Runs main.py with `args`, noting the first training step and the exit (see the module doc)."""
    sys.path.insert(0, REPO_ROOT)
    atexit.register(_note, "exit")
    import keras

    from efficientnetv2.train import training

    class FirstStep(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = False

        def on_train_batch_end(self, batch, logs=None):
            if not self.seen:
                self.seen = True
                _note("first_step")
                os.kill(os.getpid(), signal.SIGTERM)  # Save and stop, as a preemption notice.

    train = training.train
    training.train = lambda *a, **k: train(*a, callbacks=[FirstStep()], **k)
    sys.argv = [MAIN] + args
    import runpy

    runpy.run_path(MAIN, run_name="__main__")


def parse_report(text: str, started: float) -> dict:
    """The child's notes: seconds from `started` to the first step, /proc/self/io there and at exit."""
    result = {}
    for line in text.splitlines():
        event, when, read_bytes, rchar = line.split()
        result[event] = {"seconds": float(when) - started, "read_bytes": int(read_bytes), "rchar": int(rchar)}
    return result


def count_sources(log: str) -> str:
    """Where the log says the train and validation counts came from, e.g. "standard layout"."""
    found = []
    for line in log.splitlines():
        for marker, name in _COUNT_SOURCES:
            if marker in line and re.search(r"\b(train|validation)\b", line):
                found.append(name)
                break
    return ", ".join(found) or "?"


def start(data_dir: str, model_dir: str, log_path: str, shards: list, timeout: float = 600) -> dict:
    """One `main.py --mode=train` start (see the module doc); its figures."""
    drop_from_page_cache(shards)
    report = log_path + ".report"
    if os.path.exists(report):
        os.remove(report)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **{REPORT_ENV: report})
    with open(log_path, "w") as log:
        started = time.time()
        code = subprocess.call([sys.executable, os.path.abspath(__file__), "--child",
                                *main_args(data_dir, model_dir)],
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    with open(log_path, errors="replace") as f:
        text = f.read()
    with open(report) as f:
        result = parse_report(f.read(), started)
    if "first_step" not in result:
        raise RuntimeError(f"the run reached no training step (exit {code}); see {log_path}:\n{text[-3000:]}")
    result["exit_code"] = code
    result["counts"] = count_sources(text)
    return result


# -- The benchmark. -----------------------------------------------------------------------------

def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def _median(values):
    import statistics

    return statistics.median(values)


def write_sets(work_dir: str, renamed: bool = True) -> dict:
    """The shard sets: name -> (paths, record counts)."""
    # Fresh sets and run folders every time, but only folders this benchmark wrote (MARKER says so):
    # a --work_dir of the user's may hold folders of these names.
    ours = os.path.exists(os.path.join(work_dir, MARKER))
    for name in ("standard", "tenth", "renamed", "runs"):
        path = os.path.join(work_dir, name)
        if os.path.exists(path) and not ours:
            raise FileExistsError(f"{path} exists and was not written by this benchmark; nothing was "
                                  "removed: choose an empty or new --work_dir")
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.join(work_dir, "runs"))
    with open(os.path.join(work_dir, MARKER), "w") as f:
        f.write("Written by benchmarks/startup.py, which may replace its folders here.\n")
    t = time.perf_counter()
    framed = framed_records()
    tenth = {split: (shards, count // 10) for split, (shards, count) in IMAGENET.items()}
    sets = {"standard": (write_shard_set(os.path.join(work_dir, "standard"), IMAGENET, framed), IMAGENET),
            "1/10": (write_shard_set(os.path.join(work_dir, "tenth"), tenth, framed), tenth)}
    if renamed:
        sets["renamed"] = (link_renamed(sets["standard"][0], os.path.join(work_dir, "renamed")), IMAGENET)
    size = sum(os.path.getsize(p) for name in ("standard", "1/10") for p in sets[name][0])
    print(f"# wrote the shard sets in {time.perf_counter() - t:.1f} s ({size / 1e9:.2f} GB, the renamed set "
          f"as links; {len(framed[0])} bytes a record)", flush=True)
    return sets


def run(work_dir: str, renamed: bool = True, restarts: int = 3) -> dict:
    """Starts each set once, then restarts every set `restarts` times, the sets in alternating order
    (load drifts on a shared machine). Returns name -> {"records", "first start": figures,
    "restarts": [figures, ...]}; "synthetic" (the built-in data: no files) is the floor."""
    sets = write_sets(work_dir, renamed)
    sets["synthetic"] = ([], {})
    results = {name: {"records": sum(c for _, c in counts.values()), "restarts": []}
               for name, (_, counts) in sets.items()}

    def one(name, which):
        paths = sets[name][0]
        data_dir = os.path.dirname(paths[0]) if paths else None
        tag = name.replace("/", "_")
        log = os.path.join(work_dir, "runs", f"{tag}-{which}-{len(results[name]['restarts'])}.log")
        result = start(data_dir, os.path.join(work_dir, "runs", tag), log, paths)
        first, end = result["first_step"], result["exit"]
        print(f"# {name} {which}: {first['seconds']:.1f} s to the first step, read_bytes "
              f"{_mb(first['read_bytes'])} MB, rchar {_mb(first['rchar'])} MB (at exit "
              f"{_mb(end['read_bytes'])} / {_mb(end['rchar'])} MB); counts: {result['counts']}", flush=True)
        return result

    names = list(sets)
    for name in names:
        results[name]["first start"] = one(name, "first")
    for r in range(restarts):
        for name in names if r % 2 else names[::-1]:
            results[name]["restarts"].append(one(name, "restart"))
    return results


def print_table(results: dict, rep) -> None:
    table = rep.table(["shards", "records (train + val)", "start", "counts from", "s to 1st step",
                       "MB from storage to 1st step (at exit)", "MB read() to 1st step (at exit)"])
    for name, r in results.items():
        runs = [("first start", [r["first start"]])] + ([(f"restart (median of {len(r['restarts'])})",
                                                          r["restarts"])] if r["restarts"] else [])
        for which, figures in runs:
            med = {key: {k: _median([f[key][k] for f in figures]) for k in ("seconds", "read_bytes", "rchar")}
                   for key in ("first_step", "exit")}
            first, end = med["first_step"], med["exit"]
            spread = (f" ({min(f['first_step']['seconds'] for f in figures):.1f}-"
                      f"{max(f['first_step']['seconds'] for f in figures):.1f})" if len(figures) > 1 else "")
            table.add(name, f"{r['records']:,}", which, figures[0]["counts"] if name != "synthetic" else "-",
                      f"{first['seconds']:.1f}{spread}", f"{_mb(first['read_bytes'])} ({_mb(end['read_bytes'])})",
                      f"{_mb(first['rchar'])} ({_mb(end['rchar'])})")
    full, tenth = results["standard"], results["1/10"]
    if full["restarts"] and tenth["restarts"]:
        pairs = list(zip(full["restarts"], tenth["restarts"]))
        ratio = {k: _median([a["first_step"][k] / max(b["first_step"][k], 1e-9) for a, b in pairs])
                 for k in ("seconds", "read_bytes", "rchar")}
        rep.note(f"Restarts, standard / 1/10 (median of per-round ratios): time x{ratio['seconds']:.2f}, "
                 f"bytes from storage x{ratio['read_bytes']:.2f}, bytes read() x{ratio['rchar']:.2f}.")
    uncounted = [f["first_step"]["seconds"] for name, r in results.items()
                 for f in [r["first start"]] + r["restarts"] if "counted" not in f["counts"].split(", ")]
    rep.note(f"Starts that count nothing: slowest {max(uncounted):.1f} s to the first step, "
             f"median {_median(uncounted):.1f} s.")
    rep.print()


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=None, help="keep the shards and runs here (default: a temp folder)")
    parser.add_argument("--no_renamed", action="store_true", help="skip the full set under non-standard names")
    parser.add_argument("--restarts", type=int, default=3, help="restarts of each set after its first start")
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO_ROOT)
    from benchmarks import report

    rep = report.Report("Start-up on ImageNet-sized data", __file__, argv,
                        run=f"main.py --model=b0 --strategy=cpu --hparams={HPARAMS}")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="startup-")
    try:
        results = run(work_dir, renamed=not args.no_renamed, restarts=args.restarts)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_table(results, rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
