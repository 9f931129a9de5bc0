"""Checkpoints that resume: save every epoch and on SIGTERM, keep the last N, restore with fallback.

A checkpoint holds the model (weights and batch-norm statistics), the optimizer (slots, EMA weights,
step) and the position in the run: ``epoch`` (completed epochs) and ``step_in_epoch`` (batches of the
current epoch already trained, non-zero only for a checkpoint written on SIGTERM). Training data is a
pure function of (seed, epoch), so resuming skips ``step_in_epoch`` batches of that epoch and goes on
exactly where the run stopped.

``tf.train.CheckpointManager`` writes the data files first and only then rewrites its index
(``checkpoint``), so a kill during a save leaves the index pointing at the previous checkpoint.
``restore_latest`` also survives a damaged newest checkpoint (truncated or missing file): it warns,
naming both, and falls back to the one before; it never silently starts from scratch over existing
checkpoints. The candidates and the fallback are the module's functions ``checkpoint_candidates``
and ``restore_with_fallback``, which export and prediction use too (one restore path).

TensorFlow writes a checkpoint into ``ckpt-<N>_temp/`` and renames its files into place at the end;
a save that fails (disk full, read-only folder) or is killed leaves that folder behind. A failed
save raises ``CheckpointError`` naming the checkpoint and the previous one, which is kept; the next
save of a run removes leftover ``ckpt-<N>_temp`` folders (that exact name only), saying so. Not at
construction: an evaluation reading the folder while training writes must not remove a save in
progress.
"""

import os
import re
import shutil

from absl import logging
import tensorflow as tf

__all__ = [
    "RunCheckpoint",
    "CheckpointError",
    "checkpoint_candidates",
    "restore_checkpoint",
    "restore_with_fallback",
    "remove_temp_folders",
]

# The folder TensorFlow writes a checkpoint into before renaming its files into place.
_TEMP_FOLDER = re.compile(r"ckpt-\d+_temp")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored or written, or none usable where one was expected."""


class RunCheckpoint:
    """The model, optimizer and run position, saved under ``directory``.

    Args:
        directory: where checkpoints go (``model_dir/checkpoints``).
        model, optimizer: what is saved (the optimizer must be built).
        max_to_keep: how many recent checkpoints to keep.
        chief: whether this worker writes the real checkpoint. Under MultiWorkerMirroredStrategy every
            worker must take part in a save; the others write into a temporary folder, deleted after.
    """

    def __init__(self, directory, model, optimizer, max_to_keep=3, chief=True, worker_id=0):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            # Keras does not checkpoint the states of its random seed generators (dropout,
            # stochastic depth); without them a resumed run would draw other masks.
            rng=random_states(model),
        )
        self.directory = directory
        self.chief = chief
        write_dir = directory if chief else os.path.join(
            os.path.dirname(directory), f".worker-{worker_id}-tmp"
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=max_to_keep)
        # The chief's manager knows the real checkpoints; others read from there too.
        self.reader = self.manager if chief else tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=max_to_keep
        )
        self._temps_removed = not chief

    @property
    def position(self):
        return int(self.epoch.numpy()), int(self.step_in_epoch.numpy())

    def save(self, epoch, step_in_epoch=0, global_step=None):
        """Saves as ``ckpt-<global_step>`` (the optimizer's step count when not given)."""
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(step_in_epoch)
        if global_step is None:
            global_step = int(self.checkpoint.optimizer.iterations.numpy())
        if not self._temps_removed:
            remove_temp_folders(self.directory)
            self._temps_removed = True
        path = save_checkpoint(self.manager, global_step, self.directory)
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            return None
        return path

    def restore_latest(self):
        """Restores the newest usable checkpoint; returns its path, or None when there is none."""
        return restore_with_fallback(self.directory, self.restore)

    def restore(self, path):
        """Restores the checkpoint ``path`` (a prefix); ``CheckpointError`` naming it when it cannot."""
        if not tf.io.gfile.exists(path + ".index"):
            raise CheckpointError(f"checkpoint {path} not found ({path}.index is missing)")
        return restore_checkpoint(path, self._restore)

    def _restore(self, path):
        checkpoint = self.checkpoint
        if not any(name.startswith("rng/") for name, _ in tf.train.list_variables(path)):
            # Written before random states were checkpointed: restore the rest, and say what differs.
            logging.warning("Checkpoint %s has no random-generator states (an older version wrote "
                            "it); dropout and stochastic-depth masks after it will differ from an "
                            "uninterrupted run.", path)
            checkpoint = tf.train.Checkpoint(
                **{k: getattr(self.checkpoint, k) for k in ("model", "optimizer", "epoch", "step_in_epoch")}
            )
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
        return path


def save_checkpoint(manager, number, directory=None):
    """``manager.save(number)``, or a ``CheckpointError`` saying what failed (disk full, read-only) and
    which earlier checkpoint of ``directory`` (default: the manager's) is kept; the failed save's
    ``_temp`` folder is removed."""
    try:
        return manager.save(checkpoint_number=number)
    except (OSError, tf.errors.OpError) as e:
        prefix = os.path.join(manager.directory, f"ckpt-{number}")
        _remove_temp_folder(f"{prefix}_temp")
        kept = tf.train.latest_checkpoint(directory or manager.directory)
        raise CheckpointError(
            f"cannot write checkpoint {prefix} ({_reason(e)}); "
            + (f"the previous checkpoint {kept} is kept" if kept else "no earlier checkpoint exists")
        ) from e


def checkpoint_candidates(directory):
    """The checkpoint prefixes in ``directory``, newest first: those its index (``checkpoint``) lists,
    or, without a readable index, every ``ckpt-<N>`` with an ``.index`` file by decreasing N."""
    if not tf.io.gfile.isdir(directory):
        return []
    state = tf.train.get_checkpoint_state(directory)
    candidates = []
    if state is not None:
        candidates = list(reversed(state.all_model_checkpoint_paths))
        if state.model_checkpoint_path and state.model_checkpoint_path not in candidates:
            candidates.insert(0, state.model_checkpoint_path)
    if not candidates:
        indexes = tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index"))
        candidates = [i[: -len(".index")] for i in sorted(indexes, key=_number, reverse=True)]
    return candidates


def restore_checkpoint(path, restore_fn):
    """``restore_fn(path)``; any failure becomes a one-line ``CheckpointError`` naming ``path``."""
    try:
        return restore_fn(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged file fails in many ways (OpError, IndexError, ...)
        raise CheckpointError(f"checkpoint {path} cannot be restored ({_reason(e)})") from e


def restore_with_fallback(directory, restore_fn):
    """``restore_fn(path)`` for the newest checkpoint in ``directory`` it succeeds on; its result.

    A checkpoint that fails (damaged, truncated, missing a file) is skipped with a warning naming it;
    when every one fails, ``CheckpointError`` lists them all. ``None`` when there is no checkpoint.
    """
    candidates = checkpoint_candidates(directory)
    if not candidates:
        return None
    failures = []
    for path in candidates:
        try:
            result = restore_fn(path)
        except Exception as e:  # noqa: BLE001 -- a damaged file fails in many ways (OpError, IndexError, ...)
            cause = e.__cause__ if isinstance(e, CheckpointError) and e.__cause__ is not None else e
            failures.append(f"{path} ({_reason(cause)})")
            logging.warning("Checkpoint %s is damaged or unreadable (%s); falling back to the previous one.",
                            path, _reason(cause, 200))
            continue
        if failures:
            logging.warning("Restored %s instead of the damaged %s.", path, ", ".join(failures))
        return result
    raise CheckpointError(
        f"no checkpoint in {directory} can be restored into this model; refusing to start "
        f"from scratch over existing work (a damaged file, or a run of another variant or "
        f"config). Tried: {'; '.join(failures)}. Move the folder away to start anew."
    )


def remove_temp_folders(directory):
    """Removes the ``ckpt-<N>_temp`` folders of saves that failed or were killed in ``directory``.

    Only folders of exactly that name (TensorFlow's for a checkpoint being written); nothing else.
    Call it only where no other process is saving into ``directory``.
    """
    if not os.path.isdir(directory):
        return []
    removed = [os.path.join(directory, e) for e in sorted(os.listdir(directory)) if _TEMP_FOLDER.fullmatch(e)]
    removed = [path for path in removed if _remove_temp_folder(path)]
    if removed:
        logging.warning("Removed %s, left by a checkpoint save that failed or was killed.", ", ".join(removed))
    return removed


def _remove_temp_folder(path):
    """Removes the folder ``path`` (not a link, not a file); whether it did."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def _reason(error, limit=300):
    """``error`` as one line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit]}" if lines else type(error).__name__


def random_states(model):
    """The state variables of every Keras random seed generator in ``model``, in layer order."""
    return [
        generator.state
        for layer in model._flatten_layers(include_self=True, recursive=True)
        for generator in getattr(layer, "_seed_generators", [])
    ]


def _number(path):
    stem = os.path.basename(path).split(".")[0]
    try:
        return int(stem.split("-")[-1])
    except ValueError:
        return -1
