"""Sources and get_source: folder layouts, TFRecord formats, TFDS, detection, and the errors."""

import os

import pytest
import tensorflow as tf

import datasets
from datasets import records
from tests.datasets_helpers import (jpeg_bytes, make_folder, make_imagenet_dir, pillow_bytes,
                                    smooth_image, write, write_imagenet21k_shards, write_imagenet_shards)


def _labels(dataset):
    return [int(e["label"]) for e in dataset]


# -- Folder. ----------------------------------------------------------------------------------

def test_folder_with_train_and_val(tmp_path):
    make_folder(str(tmp_path / "train"), {"zebra": 3, "ant": 2})
    make_folder(str(tmp_path / "val"), {"zebra": 1, "ant": 1})
    src = datasets.get_source("auto", str(tmp_path))
    assert (src.name, src.class_names, src.num_classes, src.multi_label) == ("folder", ["ant", "zebra"], 2, False)
    assert (src.num_examples("train"), src.num_examples("eval")) == (5, 2)
    assert sorted(_labels(src.examples("train"))) == [0, 0, 1, 1, 1]


def test_folder_accepts_validation_dir_and_any_case_extensions(tmp_path):
    make_folder(str(tmp_path / "train"), {"a": 1, "b": 1}, extension=".JPEG")
    make_folder(str(tmp_path / "train"), {"b": 1}, extension=".Png", seed=1)
    write(str(tmp_path / "train" / "b" / "notes.txt"), b"not an image")
    make_folder(str(tmp_path / "validation"), {"b": 2})
    src = datasets.get_source("folder", str(tmp_path))
    assert (src.num_examples("train"), src.num_examples("eval")) == (3, 2)
    train_files = sorted(os.path.basename(e["id"].numpy().decode()) for e in src.examples("train"))
    assert train_files == ["000.JPEG", "000.JPEG", "000.Png"]
    assert _labels(src.examples("eval")) == [1, 1]


def test_folder_without_splits_holds_out_every_tenth_file(tmp_path):
    make_folder(str(tmp_path), {"a": 20, "b": 12})
    src = datasets.get_source("auto", str(tmp_path))
    assert (src.num_examples("train"), src.num_examples("eval")) == (29, 3)
    eval_ids = [os.path.basename(e["id"].numpy().decode()) for e in src.examples("eval")]
    assert eval_ids == ["009.jpg", "019.jpg", "009.jpg"]
    train_ids = {e["id"].numpy() for e in src.examples("train")}
    assert not train_ids & {e["id"].numpy() for e in src.examples("eval")}
    assert "held out" in src.describe()


@pytest.mark.parametrize("layout, error, message", [
    ("missing", FileNotFoundError, "does not exist"),
    ("empty", ValueError, "no class sub-folders"),
    ("class_without_images", ValueError, "has no images"),
    ("unknown_eval_class", ValueError, r"classes \['c'\]"),
])
def test_folder_errors_name_what_was_searched(tmp_path, layout, error, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "class_without_images":
        make_folder(str(root), {"a": 10})
        (root / "b").mkdir()
        write(str(root / "b" / "readme.txt"), b"x")
    if layout == "unknown_eval_class":
        make_folder(str(root / "train"), {"a": 1, "b": 1})
        make_folder(str(root / "val"), {"c": 1})
    with pytest.raises(error, match=message) as raised:
        datasets.get_source("folder", str(root))
    assert str(root) in str(raised.value)


@pytest.mark.parametrize("train_dir", ["", "train"])
def test_folder_with_one_class_is_refused_naming_it(tmp_path, train_dir):
    make_folder(str(tmp_path / train_dir), {"only": 12})
    with pytest.raises(ValueError, match=r"has one class folder \('only'\); a classifier needs at least 2") as raised:
        datasets.get_source("auto", str(tmp_path))
    assert str(tmp_path / train_dir).rstrip("/") in str(raised.value) and "\n" not in str(raised.value)


def test_folder_reads_every_format_predict_decodes_and_counts_the_rest(tmp_path, caplog):
    for i, image_format in enumerate(("GIF", "BMP", "WEBP")):
        write(str(tmp_path / "a" / f"{i}.{image_format.lower()}"), pillow_bytes(smooth_image(i), image_format))
    make_folder(str(tmp_path), {"a": 7, "b": 10})
    for name in ("scan.tif", "notes.txt", "more.TXT", ".DS_Store"):
        write(str(tmp_path / "b" / name), b"x")
    with caplog.at_level("WARNING"):
        src = datasets.get_source("folder", str(tmp_path))
    paths = src.files("train")[0] + src.files("eval")[0]
    assert {os.path.splitext(p)[1] for p in paths} == {".jpg", ".gif", ".bmp", ".webp"} and len(paths) == 20
    before = datasets.skipped_images()
    assert len(list(datasets.build_train_dataset(src, batch_size=6, image_size=16))) == 3  # all 18 decode
    assert datasets.skipped_images() == before
    assert [r.getMessage() for r in caplog.records if "left out" in r.getMessage()] == [
        f"left out 3 files in the class folders of {str(tmp_path)!r} that are not images of a format "
        "this pipeline reads (.tif: 1, .txt: 2); it reads .jpg, .jpeg, .png, .gif, .bmp, .webp"]


def test_folder_too_small_for_a_holdout_is_an_error(tmp_path):
    make_folder(str(tmp_path), {"a": 3, "b": 3})
    with pytest.raises(ValueError, match="no eval images"):
        datasets.get_source("folder", str(tmp_path))


def test_holdout_leaves_small_classes_out_of_eval_with_a_warning(tmp_path, caplog):
    make_folder(str(tmp_path), {"big": 10, "small": 3})
    with caplog.at_level("WARNING"):
        src = datasets.get_source("folder", str(tmp_path))
    assert (src.num_examples("train"), _labels(src.examples("eval"))) == (12, [0])
    assert any("['small']" in r.getMessage() and "none of them is held out" in r.getMessage()
               for r in caplog.records)


# -- ImageNet TFRecords. -------------------------------------------------------------------------

def test_imagenet_records_labels_are_one_based_on_disk(tmp_path):
    make_imagenet_dir(str(tmp_path), train=6, validation=3, num_classes=3)
    src = datasets.get_source("auto", str(tmp_path))
    assert (src.name, src.num_classes, src.class_names) == ("imagenet", 1000, None)
    assert (src.num_examples("train"), src.num_examples("eval")) == (6, 3)
    assert sorted(_labels(src.examples("train"))) == [0, 0, 1, 1, 2, 2]
    raw = next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(str(tmp_path / "train-*"))))))
    assert tf.train.Example.FromString(raw.numpy()).features.feature[records.LABEL_KEY].int64_list.value[0] == 1


def test_imagenet_reads_class_names_from_labels_file(tmp_path):
    make_imagenet_dir(str(tmp_path), num_classes=3)
    records.write_labels_file(str(tmp_path), ["cat", "dog", "eel"])
    src = datasets.get_source("imagenet", str(tmp_path))
    assert (src.num_classes, src.class_names) == (3, ["cat", "dog", "eel"])
    with pytest.raises(ValueError, match="num_classes=5 disagrees"):
        datasets.get_source("imagenet", str(tmp_path), num_classes=5)


def test_label_out_of_range_names_the_shard(tmp_path):
    make_imagenet_dir(str(tmp_path), num_classes=3)
    records.write_labels_file(str(tmp_path), ["cat", "dog"])  # Labels 0..2 but 2 classes.
    src = datasets.get_source("imagenet", str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label outside \[0, 2\).*train-0000"):
        list(src.examples("train"))


def test_label_zero_on_disk_is_out_of_range(tmp_path):
    write_imagenet_shards(str(tmp_path), "train", [jpeg_bytes(smooth_image(0))], [-1], num_shards=1)
    write_imagenet_shards(str(tmp_path), "validation", [jpeg_bytes(smooth_image(0))], [0], num_shards=1)
    src = datasets.get_source("imagenet", str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00000-of-00001:0"):
        list(src.examples("train"))


def test_imagenet_without_shards_says_which_pattern(tmp_path):
    write_imagenet_shards(str(tmp_path), "train", [jpeg_bytes(smooth_image(0))], [0], num_shards=1)
    with pytest.raises(FileNotFoundError, match=r"validation-\*.*matches no files"):
        datasets.get_source("imagenet", str(tmp_path))


def test_imagenet21k_gives_multi_hot_ids(tmp_path):
    image = jpeg_bytes(smooth_image(0))
    write_imagenet21k_shards(str(tmp_path), "train", [image] * 3, [[0, 4], [2], []])
    write_imagenet21k_shards(str(tmp_path), "validation", [image], [[1, 3]])
    src = datasets.get_source("imagenet21k", str(tmp_path), num_classes=5)
    assert (src.name, src.multi_label, src.num_classes) == ("imagenet21k", True, 5)
    assert [list(e["label"].numpy()) for e in src.examples("train")] == [[0, 4], [2], []]
    assert datasets.get_source("imagenet21k", str(tmp_path)).num_classes == 21843
    with pytest.raises(tf.errors.InvalidArgumentError, match="img0"):
        list(datasets.get_source("imagenet21k", str(tmp_path), num_classes=3).examples("train"))


# -- TFDS. -------------------------------------------------------------------------------------

def _tiny_tfds_builder():
    tfds = pytest.importorskip("tensorflow_datasets")

    class DatasetsTestTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

        def _generate_examples(self, count):
            for i in range(count):
                yield i, {"image": smooth_image(i, 20, 24), "label": i % 3}

    return DatasetsTestTiny


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    pytest.importorskip("importlib_resources", reason="TFDS needs it (etils[epath]) to prepare data")
    builder = _tiny_tfds_builder()(data_dir=str(tmp_path))
    builder.download_and_prepare()
    src = datasets.get_source("tfds:datasets_test_tiny", str(tmp_path))
    assert (src.num_classes, src.class_names) == (3, ["red", "green", "blue"])
    assert (src.num_examples("train"), src.num_examples("eval")) == (6, 3)
    example = next(iter(src.examples("train")))
    assert example["image"].dtype == tf.string  # Still encoded: our decoder crops it.
    assert sorted(_labels(src.examples("train", seed=tf.constant([1, 2], tf.int64)))) == [0, 0, 1, 1, 2, 2]


def test_tfds_errors(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="not prepared.*never downloads"):
        datasets.get_source("tfds:mnist", str(tmp_path))
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        datasets.get_source("tfds:no_such_dataset_xyz", str(tmp_path))


# -- get_source. -------------------------------------------------------------------------------

def test_auto_without_data_dir_is_synthetic_and_says_so():
    src = datasets.get_source()
    assert (src.name, src.num_classes) == ("synthetic", 10)
    assert "SYNTHETIC" in src.describe() and "--data_dir" in src.describe()


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet1k'.*'folder'.*'tfds:<name>'"):
        datasets.get_source("imagenet1k", "/tmp")


@pytest.mark.parametrize("dataset, data_dir, error, message", [
    ("imagenet", None, ValueError, "needs data_dir"),
    ("synthetic", "/tmp", ValueError, "reads no files"),
    ("auto", "/no/such/dir", FileNotFoundError, "'/no/such/dir' does not exist"),
])
def test_get_source_argument_errors(dataset, data_dir, error, message):
    with pytest.raises(error, match=message):
        datasets.get_source(dataset, data_dir)


def test_auto_on_a_folder_with_only_files_explains_what_it_looked_for(tmp_path):
    write(str(tmp_path / "image.jpg"), jpeg_bytes(smooth_image(0)))
    with pytest.raises(ValueError, match=r"train-\*.*class sub-folders"):
        datasets.get_source("auto", str(tmp_path))


def test_split_names_are_checked():
    with pytest.raises(ValueError, match=r"unknown split 'validation'; expected one of \['train', 'eval'\]"):
        datasets.get_source().num_examples("validation")



def test_record_counts_are_cached_in_the_run_folder_and_recounted_when_shards_change(tmp_path, caplog, monkeypatch):
    import logging

    from datasets import tfrecord

    root = make_imagenet_dir(str(tmp_path / "data"), train=12, validation=5, num_shards=2)
    run = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="absl"):
        assert datasets.get_source("imagenet", root, count_cache_dir=run).num_examples("train") == 12
    assert "counting train records" in caplog.text and os.path.isfile(os.path.join(run, "data_counts.json"))

    def refuse(*args):
        raise AssertionError("counted again")

    monkeypatch.setattr(tfrecord, "count_records", refuse)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):  # A restart: the count comes from the run folder, no read.
        assert datasets.get_source("imagenet", root, count_cache_dir=run).num_examples("train") == 12
    assert "counted before, cached in" in caplog.text
    monkeypatch.undo()
    shard = os.path.join(root, "train-00001-of-00002")
    os.remove(shard)  # Other shards: the cache does not apply, they are counted.
    assert datasets.get_source("imagenet", root, count_cache_dir=run).num_examples("train") == 6


def _standard_names(directory, first_shard):
    """Shards under the standard ImageNet-1k names, all empty but the first of each split, which holds
    ``first_shard[split]`` records."""
    from datasets import tfrecord

    os.makedirs(directory, exist_ok=True)
    for split, (shards, _) in tfrecord.IMAGENET_LAYOUT.items():
        for index in range(shards):
            with tf.io.TFRecordWriter(os.path.join(directory, records.shard_name(split, index, shards))) as w:
                for _ in range(first_shard[split] if index == 0 else 0):
                    w.write(b"r")
    return str(directory)


def test_the_standard_imagenet_layout_is_not_counted(tmp_path, monkeypatch):
    from datasets import tfrecord

    # The reference converters put 1,252 (1,251) train and 391 (390) validation records in the first shard.
    root = _standard_names(tmp_path / "data", {"train": 1252, "validation": 390})
    counted, count_records = [], tfrecord.count_records

    def count_first_shard_only(files, sizes):
        counted.append([os.path.basename(f) for f in files])
        return count_records(files, sizes)

    monkeypatch.setattr(tfrecord, "count_records", count_first_shard_only)
    run = str(tmp_path / "run")
    source = datasets.get_source("imagenet", root, count_cache_dir=run)
    assert (source.num_examples("train"), source.num_examples("eval")) == (1_281_167, 50_000)
    assert counted == [["train-00000-of-01024"], ["validation-00000-of-00128"]]
    source = datasets.get_source("imagenet", root, count_cache_dir=run)  # A restart reads no record.
    assert (source.num_examples("train"), source.num_examples("eval")) == (1_281_167, 50_000)
    assert len(counted) == 2


def test_a_subset_under_the_standard_names_is_counted(tmp_path):
    # E.g. a 1/10 subset converted with the reference converter's default shard counts.
    root = _standard_names(tmp_path, {"train": 125, "validation": 39})
    source = datasets.get_source("imagenet", root)
    assert (source.num_examples("train"), source.num_examples("eval")) == (125, 39)


def test_each_shard_is_stat_ed_once_for_counting_and_every_epoch(tmp_path, monkeypatch):
    root = make_imagenet_dir(str(tmp_path), train=6, validation=2, num_shards=2)
    src = datasets.get_source("imagenet", root)
    stat, stats = tf.io.gfile.stat, []
    monkeypatch.setattr(tf.io.gfile, "stat", lambda path: stats.append(path) or stat(path))
    assert src.num_examples("train") == 6  # Counting: a size per shard (also the count's fingerprint).
    for epoch in range(2):
        assert len(list(src.examples("train", seed=tf.constant([0, epoch], tf.int64)))) == 6
    assert sorted(stats) == sorted(tf.io.gfile.glob(os.path.join(root, "train-*")))
