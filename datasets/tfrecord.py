"""ImageNet-format TFRecord shards (see `datasets.records` for the formats).

Training order: this pipeline's shards in an order shuffled by the seed, read interleaved (16 at
a time, one record each in turn, in parallel but deterministically), then shuffled within blocks
of `SHUFFLE_BLOCK` records (`ordering.block_shuffle`).  Eval reads the shards in name order.

A corrupt or truncated shard does not stop the run: it is read up to the damage, the rest of it
is skipped, and a warning names the shard and how much of it was read.  A shard that cannot be
opened at all (it vanished or is unreadable) is skipped the same way, as missing.
`datasets.skipped_shards()` counts reads (train and eval alike); `skipping.damaged_shards` names
each shard once, corrupt or missing, however often it was read.  The epoch then runs short of the
examples counted before; the trainer fills its steps by repeating the epoch from its start and logs
each damaged shard once.  Healthy shards are read exactly as before: the same records in the same order.

The reading graph calls no Python (TPU input on a remote host and tf.data service workers in
another process run it without this interpreter), so what needs the file system is split in two:
- each shard's size is taken on the host, once per source (`shard_sizes`: one `stat` per shard, in
  parallel for cloud file systems; the record-count cache's fingerprint uses the same sizes), and
  read with it as the dataset element (name, size);
- whether the shard is there is asked at read time by a graph op (`tf.io.matching_files` on the
  name, glob characters escaped: one `stat` on a local or cloud file system), and a shard that is
  not there, or had no size, is never opened: `ignore_errors` would retry opening it forever.
A shard replaced by a smaller one after its size was taken is reported as cut short; one that
vanishes between the check and the opening would still retry, as before.
Warnings and counts are graph ops of `datasets.skipping` (see there for what the trainer counts
under tf.data service).
"""

import concurrent.futures
import json
import os
from typing import Callable, List, Optional

import tensorflow as tf
from absl import logging

from datasets import holdout as holdout_lib, ordering, records, skipping
from datasets.source import Source, check_split

IMAGENET_CLASSES = 1000
IMAGENET21K_CLASSES = 21843  # the ImageNet-21k (fall 2011) class count the reference uses
CYCLE_LENGTH = 16
_READ_BUFFER = 8 << 20
_FRAMING_BYTES = 16  # per record on disk: its length (8 bytes), the length's CRC (4), the data's CRC (4)

_PATTERNS = {"train": records.TRAIN_PATTERN, "eval": records.EVAL_PATTERN}

# The standard ImageNet-1k TFRecord layout (the reference release's and the TPU tooling's conversion):
# with exactly these shard names, and a first shard of the standard size, its record counts are known
# and start-up reads one shard per split, not every record (`TFRecordSource._standard_count`).
# ImageNet-21k has no such entry: it has no official split and no documented standard shard layout with
# exact counts (releases differ: fall 2011, winter 2021, with or without the hold-out), so its shards
# are counted once and the count cached in the run folder like any other.
IMAGENET_LAYOUT = {"train": (1024, 1_281_167), "validation": (128, 50_000)}
COUNT_CACHE_FILENAME = "data_counts.json"


def find_shards(data_dir: str, pattern: str) -> List[str]:
    """Sorted files (not folders) in `data_dir` matching `pattern`."""
    return sorted(f for f in tf.io.gfile.glob(os.path.join(data_dir, pattern))
                  if not tf.io.gfile.isdir(f))


def shard_sizes(files: List[str]) -> List[int]:
    """Each file's size in bytes, -1 for one that cannot be stat'ed (it is then skipped when read)."""
    def size(path):
        try:
            return tf.io.gfile.stat(path).length
        except (tf.errors.OpError, OSError):
            return -1

    with concurrent.futures.ThreadPoolExecutor(min(32, len(files) or 1)) as pool:
        return list(pool.map(size, files))


def count_records(files: List[str], sizes: List[int]) -> int:
    """Records in `files` of `sizes` (of a damaged shard, those before the damage)."""
    dataset = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64))).interleave(
        read_shard, cycle_length=CYCLE_LENGTH, num_parallel_calls=tf.data.AUTOTUNE)
    return int(dataset.map(lambda record, record_id: record).batch(4096).reduce(
        tf.constant(0, tf.int64), lambda n, batch: n + tf.size(batch, tf.int64)))


def _exists(path: tf.Tensor) -> tf.Tensor:
    """Whether the file `path` exists, by a graph op (glob characters in the name escaped)."""
    return tf.size(tf.io.matching_files(tf.strings.regex_replace(path, r"([*?\[\\])", r"\\\1"))) > 0


@tf.autograph.experimental.do_not_convert  # explicit tf.cond: nothing for autograph to convert
def read_shard(shard: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """(serialized record, "shard:record number") for every record of one shard of `size` bytes, up
    to any damage.

    `ignore_errors` ends the shard at a corrupt or truncated record (TFRecordDataset moves past
    the file on such an error) without saying which shard; so the bytes read are summed, and at
    the end of the shard a sum short of its size is reported naming it.  A shard that cannot be
    opened would make `ignore_errors` retry forever: one without a size (-1) or not found now is
    never opened, and reported instead.  The end-of-shard check is filtered out inside this
    dataset, so an interleave of shards sees the same elements in the same order as plain
    TFRecordDatasets.
    """
    opened = (size >= 0) & _exists(shard)
    records = (tf.data.Dataset.from_tensors(shard)
               .filter(lambda _: opened)
               .flat_map(lambda path: tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER))
               .ignore_errors())
    end = tf.data.Dataset.from_tensors((tf.constant(b""), False))

    def count(state, element):
        index, bytes_read = state
        record, is_record = element
        on_disk = tf.cast(tf.strings.length(record), tf.int64) + _FRAMING_BYTES
        record_bytes = tf.where(is_record, on_disk, tf.constant(0, tf.int64))
        new_state = (index + tf.cast(is_record, tf.int64), bytes_read + record_bytes)
        return new_state, (record, index, new_state[1], is_record)

    def keep(record, index, bytes_read, is_record):
        def at_end():
            return tf.cond(opened & (bytes_read >= size), lambda: False,
                           lambda: skipping.count_skipped_shard(shard, opened, index, bytes_read, size))
        return tf.cond(is_record, lambda: True, at_end)

    return (records.map(lambda record: (record, True)).concatenate(end)
            .scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count)
            .filter(keep)
            .map(lambda record, index, bytes_read, is_record:
                 (record, tf.strings.join([shard, tf.strings.as_string(index)], ":"))))


class TFRecordSource(Source):
    """Shards `train-*` and `validation-*` in `data_dir`, ImageNet or ImageNet-21k format.

    `holdout` > 0: no `validation-*` shards are read; about that many training records are held out
    as the eval split and never trained on (`datasets.holdout`, the paper's ImageNet-21k split).
    """

    def __init__(self, data_dir: str, multi_label: bool = False, num_classes: Optional[int] = None,
                 shuffle_block: int = ordering.SHUFFLE_BLOCK, count_cache_dir: Optional[str] = None,
                 holdout: int = 0):
        self.data_dir = data_dir
        self.holdout = holdout
        self.count_cache_dir = count_cache_dir
        self.multi_label = multi_label
        self.name = "imagenet21k" if multi_label else "imagenet"
        self.shuffle_block = shuffle_block
        if not tf.io.gfile.isdir(data_dir):
            raise FileNotFoundError(f"{self.name} data_dir {data_dir!r} does not exist")
        self._files = {split: find_shards(data_dir, pattern) for split, pattern in _PATTERNS.items()}
        if holdout:
            self._files["eval"] = self._files["train"]
        for split, files in self._files.items():
            if not files:
                raise FileNotFoundError(
                    f"no {self.name} {split} shards: pattern {os.path.join(data_dir, _PATTERNS[split])!r} "
                    "matches no files (expected TFRecord shards named like train-00000-of-01024 "
                    "and validation-00000-of-00128)")
        self.class_names = records.read_labels_file(data_dir)
        default = IMAGENET21K_CLASSES if multi_label else IMAGENET_CLASSES
        if self.class_names is not None:
            if num_classes is not None and num_classes != len(self.class_names):
                raise ValueError(f"num_classes={num_classes} disagrees with the "
                                 f"{len(self.class_names)} names in "
                                 f"{os.path.join(data_dir, records.LABELS_FILENAME)}")
            self.num_classes = len(self.class_names)
        else:
            self.num_classes = num_classes or default
        self._parse: Callable = records.parse_imagenet21k if multi_label else records.parse_imagenet
        self._counts = records.read_counts_file(data_dir) or {}
        self._sizes = {}  # Shard path -> bytes, taken once (`sizes`).

    def sizes(self, files: List[str]) -> List[int]:
        """The sizes of `files` (shards of this source), stat'ed the first time they are asked for."""
        missing = [f for f in files if f not in self._sizes]
        self._sizes.update(zip(missing, shard_sizes(missing)))
        return [self._sizes[f] for f in files]

    def num_examples(self, split: str) -> int:
        """Records of a split, read from the first of: ``num_examples.json`` in the data folder, a count
        cached in ``count_cache_dir`` (the run folder: the data folder may be read-only or remote) for
        these very shards, the standard ImageNet-1k layout (`_standard_count`: one shard read), or one
        count of every record; the last two are then cached there. Start-up does not grow with the
        number of records after the first."""
        key = "validation" if check_split(split) == "eval" else "train"
        if self.holdout:
            records_read = self._counts.get("train") or self._cached_count("train", "train")
            self._counts["train"] = records_read
            if self.holdout >= records_read:
                raise ValueError(f"hold-out of {self.holdout} records leaves nothing to train on: "
                                 f"{self.data_dir} has {records_read} training records")
            return self.holdout if key == "validation" else records_read - self.holdout
        if key not in self._counts:
            self._counts[key] = self._cached_count(key, split)
        return self._counts[key]

    def _holdout_filter(self, split: str):
        """The predicate on (record, record_id) that keeps `split`'s records; None without a hold-out."""
        if not self.holdout:
            return None
        fraction = self.holdout / (self.num_examples("train") + self.holdout)  # Of every record read.
        want = split == "eval"
        return lambda record, record_id: tf.equal(holdout_lib.is_held_out(record_id, fraction), want)

    def _standard_count(self, key: str, files: List[str], sizes: List[int]) -> Optional[int]:
        """The standard ImageNet-1k count of split `key` when `files` are its shards: the standard names,
        and a first shard holding what that layout puts there (1,251-1,252 train records, 390-391
        validation records; the reference converters, and `datasets.build_tfrecords`, all do). A subset
        converted under the default shard names fails the check and is counted; reading one shard of
        1,024 (128) keeps the check a fixed fraction of a split, once per run folder."""
        shards, count = IMAGENET_LAYOUT[key]
        names = [os.path.basename(f) for f in files]
        if self.multi_label or names != [records.shard_name(key, i, shards) for i in range(shards)]:
            return None
        first, expected = count_records(files[:1], sizes[:1]), (count // shards, -(-count // shards))
        if first not in expected:
            logging.info("%s: the standard ImageNet-1k shard names, but %s holds %d records (the standard "
                         "layout puts %d-%d there): not its counts", key, names[0], first, *expected)
            return None
        logging.info("%s: %d records (the standard ImageNet-1k layout of %d shards; %s holds %d records, "
                     "the rest is not counted)", key, count, shards, names[0], first)
        return count

    def _cached_count(self, key: str, split: str) -> int:
        files = self._files[split]
        # The cache holds the shards it counted, by name and size: other shards, another count.
        sizes = self.sizes(files)
        fingerprint = [[os.path.basename(f), size] for f, size in zip(files, sizes)]
        path = os.path.join(self.count_cache_dir, COUNT_CACHE_FILENAME) if self.count_cache_dir else None
        cache = {}
        if path and tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                cache = json.load(f)
            entry = cache.get(self.data_dir, {}).get(key)
            if entry and entry.get("shards") == fingerprint:
                logging.info("%s: %d records (counted before, cached in %s)", key, entry["count"], path)
                return int(entry["count"])
        count = self._standard_count(key, files, sizes)
        if count is None:
            logging.info("counting %s records in %d shards of %s (once%s)", key, len(files), self.data_dir,
                         f"; cached in {path}" if path else "")
            count = count_records(files, sizes)
        if path:
            cache.setdefault(self.data_dir, {})[key] = {"count": count, "shards": fingerprint}
            tmp = f"{path}.tmp-{os.getpid()}"  # Several workers may write the same cache.
            try:
                tf.io.gfile.makedirs(self.count_cache_dir)
                with tf.io.gfile.GFile(tmp, "w") as f:
                    json.dump(cache, f)
                tf.io.gfile.rename(tmp, path, overwrite=True)
            except (OSError, tf.errors.OpError) as e:  # The cache only saves time; the count stands.
                logging.warning("Could not cache the record count in %s (%s); the next start counts "
                                "again.", path, str(e).splitlines()[0][:200])
        return count

    def examples(self, split: str, *, seed: Optional[tf.Tensor] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 image_size: int = 224) -> tf.data.Dataset:
        files, shard_elements = ordering.shard_files(self._files[check_split(split)], input_context)
        file_seed, block_seed = (None, None) if seed is None else tf.unstack(
            tf.random.experimental.stateless_split(seed, 2))
        cycle_length = min(len(files), CYCLE_LENGTH)
        order = ordering.permutation(len(files), file_seed)
        shards = (tf.gather(files, order), tf.gather(tf.constant(self.sizes(files), tf.int64), order))
        dataset = tf.data.Dataset.from_tensor_slices(shards).interleave(
            read_shard, cycle_length=cycle_length,
            block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        keep = self._holdout_filter(check_split(split))
        if keep is not None:  # Before sharding elements: workers split the same records.
            dataset = dataset.filter(keep)
        if shard_elements:
            dataset = ordering.shard_elements(dataset, input_context)
        if block_seed is not None:
            dataset = ordering.block_shuffle(dataset, block_seed, self.shuffle_block)
        parse = tf.autograph.experimental.do_not_convert(
            lambda record, record_id: self._parse(record, record_id, self.num_classes))
        return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def describe(self) -> str:
        held = f" (eval: about {self.holdout} training records held out)" if self.holdout else ""
        return f"{self.name} TFRecords in {self.data_dir}: " + super().describe() + held
