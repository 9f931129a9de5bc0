"""benchmarks/transfer.py: the class split and the one recipe both target runs share."""

import os

from benchmarks import transfer


def _photos(root, classes):
    for split in ("train", "val"):
        for c in classes:
            os.makedirs(root / split / c)
            (root / split / c / "a.jpg").write_bytes(b"x")


def test_classes_split_in_two_halves_of_links(tmp_path):
    _photos(tmp_path / "photos", ["e", "a", "d", "b", "c"])
    folders, halves = transfer.split_classes(str(tmp_path / "photos"), str(tmp_path / "work"))
    assert halves == {"pretrain": ["a", "b"], "target": ["c", "d"]}  # Sorted; an odd class left out.
    for name, classes in halves.items():
        for split in ("train", "val"):
            assert sorted(os.listdir(os.path.join(folders[name], split))) == classes
            link = os.path.join(folders[name], split, classes[0])
            assert os.path.islink(link) and os.path.samefile(link, tmp_path / "photos" / split / classes[0])


def test_fine_tuning_and_scratch_differ_only_by_init_checkpoint():
    args = transfer.parse_args(["--image_size", "64", "--start_size", "48"])
    tuned = transfer.make_config(args, "/data/target", 4, init_checkpoint="/work/pretrain")
    scratch = transfer.make_config(args, "/data/target", 4)
    assert tuned.train.init_checkpoint == "/work/pretrain" and scratch.train.init_checkpoint == ""
    tuned.train.init_checkpoint = ""
    assert tuned == scratch
    assert (scratch.progressive.image_size_start, scratch.progressive.image_size_end) == (48, 64)
