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
checkpoints.
"""

import os
import shutil

from absl import logging
import tensorflow as tf

__all__ = ["RunCheckpoint", "CheckpointError"]


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


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

    @property
    def position(self):
        return int(self.epoch.numpy()), int(self.step_in_epoch.numpy())

    def save(self, epoch, step_in_epoch=0, global_step=None):
        """Saves as ``ckpt-<global_step>`` (the optimizer's step count when not given)."""
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(step_in_epoch)
        if global_step is None:
            global_step = int(self.checkpoint.optimizer.iterations.numpy())
        path = self.manager.save(checkpoint_number=global_step)
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
            return None
        return path

    def restore_latest(self):
        """Restores the newest usable checkpoint; returns its path, or None when there is none."""
        candidates = list(reversed(self.reader.checkpoints))
        latest = self.reader.latest_checkpoint
        if latest and latest not in candidates:
            candidates.insert(0, latest)
        if not candidates:
            leftovers = tf.io.gfile.glob(os.path.join(self.directory, "ckpt-*.index"))
            if leftovers:
                candidates = sorted(leftovers, key=_number, reverse=True)
                candidates = [c[: -len(".index")] for c in candidates]
            else:
                return None
        failures = []
        for path in candidates:
            try:
                self.restore(path)
            except Exception as e:  # noqa: BLE001 -- a damaged file fails in many ways (OpError, IndexError, ...)
                failures.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
                logging.warning(
                    "Checkpoint %s is damaged or unreadable (%s: %s); falling back to the previous one.",
                    path,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                continue
            if failures:
                logging.warning("Restored %s instead of the damaged %s.", path, ", ".join(failures))
            return path
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored into this model; refusing to start "
            f"from scratch over existing work (a damaged file, or a run of another variant or "
            f"config). Tried: {'; '.join(failures)}. Move the folder away to start anew."
        )

    def restore(self, path):
        if not tf.io.gfile.exists(path + ".index"):
            raise CheckpointError(f"checkpoint {path} not found ({path}.index is missing)")
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
