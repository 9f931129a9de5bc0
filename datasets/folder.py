"""A folder of class sub-folders: `<root>/<class>/*.jpg|jpeg|png|gif|bmp|webp` (extensions in any
case: every format predict decodes).  At least two classes; other files in class folders are left out
and counted in one log line by extension.

Splits: with `<root>/train/` the classes are its sub-folders and eval comes from `<root>/val/`
(or `<root>/validation/`); eval classes must be among the train classes.  Without split folders
(or with `train/` alone) the eval split is a deterministic hold-out: in each class, the files at
positions 9, 19, 29, ... of the name-sorted list (every 10th, `holdout_every`) are eval, the rest
train.  Class names are the sorted sub-folder names; label i is class_names[i].  Only files
directly inside a class folder are read; folders whose name starts with "." are ignored.

A file or folder whose name is not valid UTF-8 (TensorFlow's file functions refuse the whole
folder for one such name) is left out with a warning naming its folder and the name in
backslash escapes (b'bad\\xff.jpg'); rename it to include it.  `FolderSource.unreadable_names`
lists them.
"""

import collections
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
from absl import logging

from datasets import ordering, skipping
from datasets.source import Source, check_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
TRAIN_DIR = "train"
EVAL_DIRS = ("val", "validation")
HOLDOUT_EVERY = 10

Files = Tuple[List[str], List[int]]  # paths, labels


def listdir(directory: str, unreadable: Optional[List[bytes]] = None) -> List[str]:
    """Names in `directory` except those that are not valid UTF-8, which are logged (and their
    paths, as bytes, appended to `unreadable`)."""
    try:
        return tf.io.gfile.listdir(directory)
    except UnicodeDecodeError:
        # Only a local folder can hold such a name; os.listdir hands it back with surrogates.
        names = os.listdir(directory)
    bad = sorted(os.fsencode(name) for name in names if not _is_utf8(name))
    logging.warning("left out %d name(s) in %r that are not valid UTF-8: %s (rename them to "
                    "include them)", len(bad), directory, ", ".join(repr(name) for name in bad))
    if unreadable is not None:
        unreadable += [os.path.join(os.fsencode(directory), name) for name in bad]
    return [name for name in names if _is_utf8(name)]


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _subfolders(directory: str, unreadable: List[bytes]) -> List[str]:
    return sorted(name.rstrip("/") for name in listdir(directory, unreadable)
                  if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(directory, name)))


def _images(directory: str, unreadable: List[bytes], left_out: collections.Counter) -> List[str]:
    """Image paths in `directory`, sorted; other names (not hidden) counted by extension in `left_out`."""
    names = [name for name in listdir(directory, unreadable) if not name.startswith(".")]
    for name in names:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            left_out[os.path.splitext(name.rstrip("/"))[1].lower() or "(no extension)"] += 1
    return sorted(os.path.join(directory, name) for name in names if name.lower().endswith(IMAGE_EXTENSIONS))


def _list_split(directory: str, class_names: List[str], unreadable: List[bytes]) -> Dict[str, List[str]]:
    left_out = collections.Counter()
    split = {name: _images(os.path.join(directory, name), unreadable, left_out) for name in class_names}
    if left_out:
        logging.warning("left out %d files in the class folders of %r that are not images of a format "
                        "this pipeline reads (%s); it reads %s", sum(left_out.values()), directory,
                        ", ".join(f"{ext}: {n}" for ext, n in sorted(left_out.items())),
                        ", ".join(IMAGE_EXTENSIONS))
    return split


def split_dirs(root: str) -> Tuple[str, Optional[str]]:
    """(train directory, eval directory or None for a hold-out)."""
    train_dir = os.path.join(root, TRAIN_DIR)
    if not tf.io.gfile.isdir(train_dir):
        return root, None
    for name in EVAL_DIRS:
        if tf.io.gfile.isdir(os.path.join(root, name)):
            return train_dir, os.path.join(root, name)
    return train_dir, None


def list_folder(root: str, holdout_every: int = HOLDOUT_EVERY,
                unreadable: Optional[List[bytes]] = None) -> Tuple[List[str], Dict[str, Files]]:
    """(class_names, {"train": (paths, labels), "eval": (paths, labels)}) of a folder dataset.

    Paths whose names are not valid UTF-8 are left out (appended, as bytes, to `unreadable`).
    Raises FileNotFoundError for a missing root, ValueError for a root without class
    sub-folders, a class folder without images, or an eval class unknown to train.
    """
    unreadable = [] if unreadable is None else unreadable
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    train_dir, eval_dir = split_dirs(root)
    class_names = _subfolders(train_dir, unreadable)
    if not class_names:
        raise ValueError(f"no class sub-folders in {train_dir!r}: expected <class>/*"
                         f"{'|'.join(IMAGE_EXTENSIONS)} (optionally under train/ and val/)")
    if len(class_names) < 2:  # One class trains to top-1 1.0 and predicts it for anything.
        raise ValueError(f"data folder {train_dir!r} has one class folder ({class_names[0]!r}); a "
                         "classifier needs at least 2: put each class's images in a sub-folder of its own")
    train = _list_split(train_dir, class_names, unreadable)
    for name, paths in train.items():
        if not paths:
            raise ValueError(f"class folder {os.path.join(train_dir, name)!r} has no images "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)} in any case)")
    if eval_dir is None:
        held_out = {name: paths[holdout_every - 1::holdout_every] for name, paths in train.items()}
        too_small = [name for name, paths in held_out.items() if not paths]
        if too_small and len(too_small) < len(class_names):
            logging.warning("classes %s of %r have fewer than %d images: none of them is held out "
                            "for eval", too_small, root, holdout_every)
        train = {name: [p for i, p in enumerate(paths) if (i + 1) % holdout_every]
                 for name, paths in train.items()}
        evaluation = held_out
    else:
        unknown = sorted(set(_subfolders(eval_dir, unreadable)) - set(class_names))
        if unknown:
            raise ValueError(f"eval folder {eval_dir!r} has classes {unknown} that {train_dir!r} "
                             f"lacks; train classes: {class_names}")
        evaluation = _list_split(eval_dir, [n for n in class_names
                                            if tf.io.gfile.isdir(os.path.join(eval_dir, n))],
                                 unreadable)

    def flatten(split: Dict[str, List[str]]) -> Files:
        paths, labels = [], []
        for name, files in split.items():
            paths += files
            labels += [class_names.index(name)] * len(files)
        return paths, labels

    return class_names, {"train": flatten(train), "eval": flatten(evaluation)}


class FolderSource(Source):
    """Images in class sub-folders (see the module docstring for splits)."""

    def __init__(self, root: str, holdout_every: int = HOLDOUT_EVERY):
        self.root = root
        self.name = "folder"
        self.unreadable_names: List[bytes] = []  # paths left out: names not valid UTF-8
        self.class_names, self._files = list_folder(root, holdout_every, self.unreadable_names)
        self.num_classes = len(self.class_names)
        self.multi_label = False
        self._holdout_every = holdout_every if split_dirs(root)[1] is None else None
        for split, (paths, _) in self._files.items():
            if not paths:
                raise ValueError(f"no {split} images found in {root!r}" + (
                    f": the eval split holds out every {holdout_every}th file of a class, and no "
                    f"class has {holdout_every} images; put at least {holdout_every} images in a "
                    f"class, or eval images in {os.path.join(root, EVAL_DIRS[0], '<class>')} beside "
                    f"the training images in {os.path.join(root, TRAIN_DIR, '<class>')}"
                    if self._holdout_every and split == "eval" else ""))

    def files(self, split: str) -> Files:
        """(paths, labels) of `split`, in listing order."""
        return self._files[check_split(split)]

    def num_examples(self, split: str) -> int:
        return len(self.files(split)[0])

    def examples(self, split: str, *, seed: Optional[tf.Tensor] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 image_size: int = 224) -> tf.data.Dataset:
        paths, labels = self.files(split)
        rows = ordering.shard_in_memory([paths, tf.constant(labels, tf.int32)], seed, input_context)
        # A file that vanished since the listing (or cannot be read) is skipped and counted like an
        # undecodable one, not a crash inside the training step.
        return skipping.map_skipping_errors(
            rows, lambda path, label: {"image": tf.io.read_file(path), "label": label, "id": path},
            lambda path, label: path)

    def describe(self) -> str:
        held_out = (f" (eval: every {self._holdout_every}th file per class held out)"
                    if self._holdout_every else "")
        unreadable = (f"; {len(self.unreadable_names)} files or folders left out (names not "
                      "valid UTF-8)" if self.unreadable_names else "")
        return f"folder {self.root}: " + super().describe() + held_out + unreadable
