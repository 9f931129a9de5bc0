"""Skip undecodable images, and TFRecord shards that are corrupt or missing; count both.

tf.data has no try/except: `Dataset.ignore_errors()` drops failing elements silently.  Here each
run of WINDOW elements is processed inside a dataset of its own, with its places in the run; a
failure leaves a gap in the places, which names it (the run's ids) and counts it.  Failed elements
are counted and the first ones named.  One dataset per run of WINDOW elements, not per element:
its cost is then shared by the run's elements.

Only errors raised by `fn` are skipped; errors upstream (a label out of range) still stop the
pipeline.  A corrupt or truncated TFRecord shard is read up to the damage, and one that cannot be
opened is not read; `datasets.tfrecord` reports either here (`count_skipped_shard`).
`skipped_shards()` counts reads, and a table keeps each damaged shard's last read and kind, so
`damaged_shards(since)` names each shard once however often an epoch that runs short re-reads it.

Graph ops only, no `tf.py_function`: a TPU's input pipeline on a remote host and a tf.data service
worker in another process run this graph without the Python interpreter that built it.  So:
- the warnings are `tf.print`s to stderr, which lands in the log of whichever process runs the
  pipeline (a service worker's warnings are in that worker's log, where its files are);
- the counts are two int64 `tf.Variable`s and a `MutableHashTable` of damaged shards on this host's
  CPU, captured by the dataset functions and read by `skipped_images()` / `skipped_shards()` /
  `damaged_shards()`: exact for a pipeline run in this process.  A dataset sent to tf.data service
  is serialized with a copy of each (its value then); the worker counts in its copy, so the
  trainer's counts stay 0 for skips made by service workers (its epoch logs say 0; the workers'
  logs name every skipped shard and the first images).  Rejected: counting by appending lines to a
  file (`tf.print(output_stream="file://...")`): the path would have to exist on every worker, and
  appends from several processes to a file on a cloud file system overwrite each other; exact
  in-process counts are what the trainer needs.
"""

import concurrent.futures
import sys
import threading
from typing import Callable, List, NamedTuple, Optional

import tensorflow as tf

_MAX_LOGGED = 100

_lock = threading.Lock()
_counters: Optional[dict] = None


# A damaged shard's kind, as kept in the table: read up to the damage, or not opened at all.
CORRUPT, MISSING = 1, 2
_KIND_NAMES = {CORRUPT: "corrupt", MISSING: "missing"}
_MAX_NAMED_SHARDS = 10  # in an epoch's summary; the per-read warnings name every one


def _make_counters() -> dict:
    with tf.device("/CPU:0"):
        counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=f"skipped_{name}")
                    for name in ("images", "shards")}
        # Shard name -> (the read count at its last read, kind, records read): one row per damaged
        # shard, however often it is read, so a summary costs one export of at most the shard count.
        counters["shard_table"] = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, default_value=tf.zeros([3], tf.int64), name="damaged_shards")
        return counters


@tf.autograph.experimental.do_not_convert  # Called while dataset functions are traced; plain Python.
def _counter(name: str):
    """This process' count of skipped `name` ("images" or "shards") or its "shard_table", created
    on first use.

    Created eagerly, on the CPU, and never by a `tf.distribute` strategy: within a strategy's scope
    (datasets may be built there) a variable would be mirrored over the replicas' devices (on a TPU,
    out of the input pipeline's reach).  Strategy scopes and graph contexts are per thread, so the
    variables are made in a thread of their own.
    """
    global _counters
    with _lock:
        if _counters is None:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                _counters = pool.submit(_make_counters).result()
    return _counters[name]


def _count(name: str) -> int:
    return 0 if _counters is None else int(_counters[name].read_value())


def skipped_images() -> int:
    """How many images this process' pipelines skipped as undecodable so far (all pipelines, all
    epochs; not those skipped by tf.data service workers).

    Read it before and after an epoch for that epoch's count.  Elements in flight count once
    they reach the point where they are dropped.
    """
    return _count("images")


def skipped_shards() -> int:
    """How many TFRecord shard reads this process cut short at damage or could not open so far (all
    pipelines, all epochs; a damaged shard counts once per read of it; not those read by tf.data
    service workers).  A mark for `damaged_shards`; for a count of shards, use that."""
    return _count("shards")


class DamagedShard(NamedTuple):
    name: str
    kind: str  # "corrupt" (read up to the damage) or "missing" (could not be opened)
    records: int  # read before the damage at its last read (0 when missing)


def damaged_shards(since: int = 0) -> List[DamagedShard]:
    """Each TFRecord shard found damaged by a read after the mark `since` (a `skipped_shards()`
    value), once however often it was read since, with its kind at its last read; sorted by name."""
    if _counters is None:
        return []
    names, rows = _counters["shard_table"].export()
    return sorted(DamagedShard(name.decode(errors="replace"), _KIND_NAMES[int(kind)], int(records))
                  for name, (last_read, kind, records) in zip(names.numpy(), rows.numpy())
                  if last_read > since)


def describe_damaged_shards(shards: List[DamagedShard]) -> str:
    """One phrase for a log line: how many shards of each kind, and the first ones named with what
    happened to them."""
    def what(shard):
        if shard.kind == "corrupt":
            return f"corrupt: cut short after {shard.records} records"
        return "missing: could not be opened"

    corrupt = sum(shard.kind == "corrupt" for shard in shards)
    named = [f"{shard.name} ({what(shard)})" for shard in shards[:_MAX_NAMED_SHARDS]]
    more = f" and {len(shards) - len(named)} more" if len(shards) > len(named) else ""
    return (f"{len(shards)} damaged TFRecord shards skipped ({corrupt} corrupt, {len(shards) - corrupt} "
            f"missing)" + (f": {', '.join(named)}{more}" if shards else ""))


def _warn(*parts) -> tf.Operation:
    """Prints "WARNING: " and `parts` (strings and scalar tensors) as one line on stderr."""
    text = [p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p) for p in parts]
    # One scalar string: tf.print would quote the strings of a longer list.
    return tf.print(tf.strings.join(["WARNING: ", *text]), output_stream=sys.stderr)


def count_skipped_shard(shard: tf.Tensor, opened: tf.Tensor, records_read: tf.Tensor,
                        bytes_read: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Graph ops that count one shard read cut short, or not opened (`opened` False), keep it in the
    table and warn which shard and what happened to it; a False that depends on them."""
    count = _counter("shards").assign_add(1)
    kind = tf.where(opened, tf.constant(CORRUPT, tf.int64), tf.constant(MISSING, tf.int64))
    table = _counter("shard_table")
    kept = table.insert(shard, tf.stack([count, kind, records_read]))
    what = tf.cond(opened, lambda: tf.strings.join([
        "is corrupt or truncated: read ", tf.strings.as_string(records_read), " records (",
        tf.strings.as_string(bytes_read), " of ", tf.strings.as_string(size),
        " bytes), skipped the rest of it"]),
        lambda: tf.constant("is missing or unreadable: could not be opened; skipped it"))
    with tf.control_dependencies([kept]):
        shards = table.size()
    with tf.control_dependencies([_warn("TFRecord shard ", shard, " ", what, " (", shards,
                                        " damaged shard(s) so far, ", count, " damaged read(s) in all)")]):
        return tf.constant(False)


def _count_skipped_image(example_id: tf.Tensor) -> tf.Tensor:
    count = _counter("images").assign_add(1)

    def warn():
        last = tf.where(count == _MAX_LOGGED, "; no more will be logged one by one", "")
        with tf.control_dependencies([_warn("skipped undecodable image ", example_id, " (", count,
                                            " skipped so far", last, ")")]):
            return tf.constant(False)

    return tf.cond(count <= _MAX_LOGGED, warn, lambda: tf.constant(False))


def _empty(spec: tf.TensorSpec) -> tf.Tensor:
    """A tensor of `spec`'s dtype and rank with no elements (a scalar for rank 0)."""
    return tf.zeros([0] * spec.shape.rank, spec.dtype)


def _call(fn: Callable, element):
    return fn(*element) if isinstance(element, tuple) else fn(element)


WINDOW = 16  # Elements per inner dataset: its set-up cost is shared by this many.


def map_skipping_errors(dataset: tf.data.Dataset, fn: Callable, id_fn: Callable,
                        num_parallel_calls: int = tf.data.AUTOTUNE,
                        window: int = WINDOW) -> tf.data.Dataset:
    """`dataset.map(fn)`, in order, without the elements on which `fn` raises an error.

    `id_fn(*element)` gives a string tensor naming the element (file, shard and record) for the
    log.  Elements must be tuples or single structures as in `Dataset.map`.  Both are traced as
    written, without autograph (a process' first conversion cost seconds): control flow on tensors
    must be `tf.cond` / `tf.while_loop`, as a Python `if` on a tensor fails while tracing.

    Each run of `window` elements is mapped in a dataset of its own with `ignore_errors()`; the
    mapped elements keep their place in the run, so a gap in the places is a failure, named from
    the run's ids and counted.  A last empty-shaped element closes each run (counting failures at
    its end) and is dropped.  One dataset per run instead of one per element: its set-up (a few
    tenths of a millisecond of CPU) was a tenth of an image's whole cost at 300 px.
    """
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")

    @tf.autograph.experimental.do_not_convert  # explicit tf.cond/while_loop: nothing to convert
    def attempt(*runs):
        elements = runs[0] if len(runs) == 1 else tf.data.Dataset.zip(runs)
        if isinstance(elements, dict):
            elements = tf.data.Dataset.zip(elements)
        ids = elements.map(lambda *e: id_fn(*e)).batch(window).get_single_element()
        mapped = elements.enumerate().map(lambda place, e: (_call(fn, e), place)).ignore_errors()
        spec = mapped.element_spec[0]
        end = tf.data.Dataset.from_tensors((tf.nest.map_structure(_empty, spec),
                                            tf.size(ids, out_type=tf.int64)))

        def count_failures(expected, element):
            output, place = element

            def count():
                def body(p, ok):
                    ok = _count_skipped_image(ids[p])
                    return p + 1, ok
                _, ok = tf.while_loop(lambda p, ok: p < place, body, [expected, tf.constant(True)])
                return ok

            counted = tf.cond(place > expected, count, lambda: tf.constant(True))
            with tf.control_dependencies([counted]):
                is_output = place < tf.size(ids, out_type=tf.int64)
            return place + 1, (output, is_output)

        return (mapped.concatenate(end)
                .scan(tf.constant(0, tf.int64), count_failures)
                .filter(lambda output, is_output: is_output)
                .map(lambda output, is_output: tf.nest.map_structure(
                    lambda t, s: tf.ensure_shape(t, s.shape), output, spec)))

    return (dataset.window(window)
            .interleave(attempt, num_parallel_calls=num_parallel_calls, block_length=window,
                        deterministic=True))
