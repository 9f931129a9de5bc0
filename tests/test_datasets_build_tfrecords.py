"""datasets/build_tfrecords.py: folder -> ImageNet-format shards -> the imagenet source."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import build_tfrecords, records
from tests.datasets_helpers import cmyk_jpeg_bytes, jpeg_bytes, png_bytes, smooth_image, write


def _read_records(out):
    examples = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(out, "*-of-*"))):
        for raw in tf.data.TFRecordDataset(path):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            text = feature["image/class/text"].bytes_list.value[0].decode()
            name = f'{text}/{feature["image/filename"].bytes_list.value[0].decode()}'
            examples[name] = (os.path.basename(path), feature[records.IMAGE_KEY].bytes_list.value[0],
                              feature[records.LABEL_KEY].int64_list.value[0], text)
    return examples


def test_round_trip(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    rgb = smooth_image(0)
    originals = {"train/cat/rgb.jpg": jpeg_bytes(rgb), "train/cat/gray.JPEG": jpeg_bytes(rgb[..., :1]),
                 "train/dog/lossless.png": png_bytes(rgb), "train/dog/b.jpg": jpeg_bytes(smooth_image(1)),
                 "train/dog/empty.jpg": b"", "train/cat/junk.jpg": b"\xff\xd8 not really a jpeg",
                 "val/cat/v.jpg": jpeg_bytes(smooth_image(2)), "val/dog/w.jpg": jpeg_bytes(smooth_image(3))}
    if _has_pillow():
        originals["train/dog/cmyk.jpg"] = cmyk_jpeg_bytes(rgb)
    for name, data in originals.items():
        write(str(src / name), data)
    skipped_before = datasets.skipped_images()

    assert build_tfrecords.main(["--src", str(src), "--out", out, "--shards", "2"]) == 0

    train_count = 4 + _has_pillow()
    assert datasets.skipped_images() - skipped_before == 2  # empty.jpg and junk.jpg
    assert sorted(os.listdir(out)) == sorted(["labels.txt", "num_examples.json", "train-00000-of-00002",
                                              "train-00001-of-00002", "validation-00000-of-00001"])
    with open(os.path.join(out, "num_examples.json")) as f:
        assert json.load(f) == {"train": train_count, "validation": 2}
    examples = _read_records(out)
    assert set(examples) == {n.split("/", 1)[1] for n, d in originals.items() if d and b"not" not in d}
    for name in ("train/cat/rgb.jpg", "train/cat/gray.JPEG", "train/dog/b.jpg", "val/cat/v.jpg"):
        assert examples[name.split("/", 1)[1]][1] == originals[name]  # JPEGs are stored as they are.
    assert examples["cat/v.jpg"][0].startswith("validation-")
    # 1-based labels with the class name beside them; class order = sorted folder names.
    assert {(label, text) for _, _, label, text in examples.values()} == {(1, "cat"), (2, "dog")}
    png_as_jpeg = examples["dog/lossless.png"][1]
    assert tf.io.is_jpeg(png_as_jpeg)
    assert np.abs(tf.io.decode_jpeg(png_as_jpeg).numpy().astype(int) - rgb).mean() < 4
    if _has_pillow():
        assert tf.io.extract_jpeg_shape(examples["dog/cmyk.jpg"][1]).numpy()[2] == 3

    src_records = datasets.get_source("auto", out)
    assert (src_records.name, src_records.class_names) == ("imagenet", ["cat", "dog"])
    assert (src_records.num_examples("train"), src_records.num_examples("eval")) == (train_count, 2)
    assert sorted(int(e["label"]) for e in src_records.examples("eval")) == [0, 1]

    with pytest.raises(FileExistsError, match="already holds labels.txt, num_examples.json, train-"):
        build_tfrecords.convert(str(src), out)


def _has_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_shards_mix_classes_and_are_balanced(tmp_path):
    for c in ("a", "b"):
        for i in range(12):
            write(str(tmp_path / "src" / c / f"{i:02d}.jpg"), jpeg_bytes(smooth_image(i, 8, 8)))
    out = str(tmp_path / "out")
    counts = build_tfrecords.convert(str(tmp_path / "src"), out, shards=3)
    assert counts == {"train": 22, "validation": 2}  # Hold-out: files 09 of each class.
    labels_per_shard = {}
    for shard, _, label, _ in _read_records(out).values():
        labels_per_shard.setdefault(shard, []).append(label)
    train = [labels for shard, labels in sorted(labels_per_shard.items()) if shard.startswith("train")]
    assert sorted(len(labels) for labels in train) == [7, 7, 8]
    assert all(set(labels) == {1, 2} for labels in train)


def _small_src(root, per_class=12):
    for c in ("a", "b"):
        for i in range(per_class):
            write(str(root / c / f"{i:02d}.jpg"), jpeg_bytes(smooth_image(i, 8, 8)))
    return str(root)


@pytest.mark.parametrize("existing", [["train-00000-of-00001", "notes.txt"], ["labels.txt"],
                                      ["num_examples.json"], ["validation-00000-of-00004"]])
def test_out_holding_files_it_would_write_is_refused_and_kept(tmp_path, capsys, existing):
    src, out = _small_src(tmp_path / "src"), tmp_path / "out"
    for i, name in enumerate(existing):
        write(str(out / name), f"the user's own {i}".encode())
    assert build_tfrecords.main(["--src", src, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(out) in error and "already holds" in error
    assert existing[0] in error and "notes.txt" not in error
    assert sorted(os.listdir(out)) == sorted(existing)
    for i, name in enumerate(existing):
        assert (out / name).read_bytes() == f"the user's own {i}".encode()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = write(str(tmp_path / "out"), b"mine")
    assert build_tfrecords.main(["--src", _small_src(tmp_path / "src"), "--out", out]) == 1
    assert "is a file" in capsys.readouterr().err
    assert open(out, "rb").read() == b"mine"


def test_classes_too_small_for_the_holdout_are_a_one_line_error(tmp_path, capsys):
    src, out = _small_src(tmp_path / "src", per_class=4), str(tmp_path / "out")
    assert build_tfrecords.main(["--src", src, "--out", out]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no eval images" in error and "at least 10 images" in error
    assert os.path.join(src, "val", "<class>") in error
    assert not os.path.exists(out)


def test_missing_src_and_bad_shard_counts_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert build_tfrecords.main(["--src", str(tmp_path / "nothing"), "--out", out]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert build_tfrecords.main(["--src", _small_src(tmp_path / "src"), "--out", out,
                                 "--validation_shards", "0"]) == 1
    assert "--validation_shards must be >= 1" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.parametrize("out, where", [(".", "is"), ("records", "is inside"), ("..", "holds"),
                                        ("link", "is")])
def test_out_nested_with_src_is_refused_before_writing(tmp_path, capsys, out, where):
    src = _small_src(tmp_path / "photos" / "src")
    os.symlink(src, tmp_path / "link")  # The same folder under another name.
    before = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path)
                    for f in files)
    out = str(tmp_path / "link") if out == "link" else os.path.normpath(os.path.join(src, out))
    assert build_tfrecords.main(["--src", src, "--out", out]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--out {out!r} {where} --src {src!r}; nothing was written" in error
    after = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path)
                   for f in files)
    assert after == before
