"""Checkpoints that resume: save every epoch and on SIGTERM, keep the last N, restore with fallback.

A checkpoint holds the model, the optimizer (slots, EMA weights, step) and the position in the
run: ``epoch``, ``step_in_epoch`` (non-zero only for a checkpoint written on SIGTERM) and the
records each input pipeline used up to there (``data_position``). Training data is a pure function
of (seed, epoch), so a resume skips those records and goes on exactly where the run stopped.

This module is the one reader of the project's checkpoints, so every restore has the same
fallback: training's resume and evaluation (``RunCheckpoint``), export and prediction
(``restore_model``, EMA weights swapped in) and fine-tuning from a run (``read_weights``, by
variable path, for a model whose classifier may differ). A damaged newest checkpoint or index is
a warning naming it, and the one before is used (``checkpoint_candidates``,
``restore_with_fallback``); existing checkpoints are never silently ignored.

The EMA weights (and averaged batch-norm statistics) are saved under our own name,
``ema/<variable path>``, so reading them depends neither on the optimizer's kind nor on Keras'
names; older checkpoints without that entry still read, by Keras' name, and resume with what
they have.

A failed save (disk full, read-only folder) raises ``CheckpointError`` and keeps the previous
checkpoint; the next save of a run removes the ``ckpt-<N>_temp`` folders TensorFlow leaves
behind. Not at construction: an evaluation reading the folder must not remove a save in progress.
"""

import concurrent.futures
import dataclasses
import os
import re
import shutil

from absl import logging
import numpy as np
import tensorflow as tf

__all__ = [
    "RunCheckpoint",
    "CheckpointError",
    "CheckpointWeights",
    "read_weights",
    "restore_model",
    "saved_shapes",
    "is_run_checkpoint",
    "checkpoint_candidates",
    "find_checkpoint",
    "restore_checkpoint",
    "restore_with_fallback",
    "read_index",
    "remove_temp_folders",
    "plain_variable",
]

# The folder TensorFlow writes a checkpoint into before renaming its files into place.
_TEMP_FOLDER = re.compile(r"ckpt-\d+_temp")


def plain_variable(initial_value, **kwargs):
    """A non-trainable ``tf.Variable`` on this host's CPU, never mirrored by the ``tf.distribute``
    strategy in whose scope the caller may be: made in a thread of its own (scopes are per thread)."""
    def make():
        with tf.device("/CPU:0"):
            return tf.Variable(initial_value, trainable=False, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(make).result()


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
        # Per input pipeline (per-replica batch, batches, records) at step_in_epoch (``data_position``);
        # its own on every worker, whatever the number of pipelines.
        self._data_position = plain_variable(tf.zeros([0, 3], tf.int64), shape=tf.TensorShape([None, 3]),
                                             name="data_position")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            data_position=self._data_position,
            # Keras does not checkpoint the states of its random seed generators (dropout,
            # stochastic depth); without them a resumed run would draw other masks.
            rng=random_states(model),
            # The EMA weights under our own name (see the module docstring); the same variables as
            # the optimizer's, so nothing is stored twice.
            ema=ema_variables(model, optimizer),
        )
        self._averaged = {v.path: v for v in model.weights}  # What each ``ema`` entry averages.
        self.directory = directory
        self.chief = chief
        if chief:
            _repair_index(directory)
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

    @property
    def data_position(self):
        """int64 [num_input_pipelines, 3]: (per-replica batch, batches, records) of each input pipeline at
        ``step_in_epoch``, the records its batches used (``efficientnetv2.train.data_position``);
        no rows when unknown (several workers, or written before it existed)."""
        return self._data_position.numpy()

    def save(self, epoch, step_in_epoch=0, global_step=None, data_position=()):
        """Saves as ``ckpt-<global_step>`` (the optimizer's step count when not given)."""
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(step_in_epoch)
        self._data_position.assign(np.asarray(data_position, np.int64).reshape(-1, 3))
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
        saved = _root_names(path)
        objects = {name: getattr(self.checkpoint, name)
                   for name in ("model", "optimizer", "epoch", "step_in_epoch", "data_position", "rng", "ema")}
        if "data_position" not in saved:  # Written before it existed: resumes by skipping batches.
            self._data_position.assign(tf.zeros([0, 3], tf.int64))
            del objects["data_position"]
        if "rng" not in saved:
            # Written before random states were checkpointed: restore the rest, and say what differs.
            logging.warning("Checkpoint %s has no random-generator states (an older version wrote "
                            "it); dropout and stochastic-depth masks after it will differ from an "
                            "uninterrupted run.", path)
            del objects["rng"]
        ema = dict(objects.pop("ema"))
        present = _ema_keys(tf.train.load_checkpoint(path), ema) if "ema" in saved else {}
        if "ema" in saved:
            objects["ema"] = {name: average for name, average in ema.items() if name in present}
        # Without the entry (written before it existed) the optimizer restores the trainable averages.
        restarted = [name for name in ema if name not in present and name not in self._trainable_averages()]
        _restore_objects(path, objects)
        if restarted:
            logging.warning("Checkpoint %s has no averages of %d batch-norm statistics (an older version "
                            "wrote it); they restart at the restored statistics.", path, len(restarted))
            for name in restarted:
                ema[name].assign(self._averaged[name])
        return path

    def _trainable_averages(self):
        return {path for path, v in self._averaged.items() if v.trainable}


def _restore_objects(path, objects, partial=False):
    """Restores the named ``objects`` (``model``, ``optimizer``, ...) from the checkpoint ``path``.

    Every object given must be in the checkpoint with its shape, else an error; ``partial`` lets the
    checkpoint hold more than is asked for (an export needs no optimizer).
    """
    status = tf.train.Checkpoint(**objects).restore(path)
    if partial:
        status.expect_partial()
    status.assert_existing_objects_matched()


def ema_variables(model, optimizer):
    """{variable path: the optimizer's moving average of it} for the model's trainable weights and the
    batch-norm statistics it averages; empty when the optimizer keeps no EMA."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # mixed_float16's LossScaleOptimizer.
    averages = getattr(inner, "_model_variables_moving_average", None) if getattr(inner, "use_ema", False) else None
    if not averages:
        return {}
    found = {v.path: a for v, a in zip(model.trainable_weights, averages) if a is not None}
    found.update({v.path: a for v, a in getattr(inner, "moving_statistics_averages", [])})
    return found


# ------------------------------------------------------------------------------------------------
# Model weights without the trainer's objects: export, prediction, fine-tuning.


@dataclasses.dataclass
class CheckpointWeights:
    """The model weights of one of our checkpoints, by Keras variable path."""

    prefix: str
    values: dict  # path -> array, every model variable
    ema: dict  # path -> array, the EMA of the trainable ones (empty without EMA)

    def value(self, path, use_ema=True):
        if use_ema and path in self.ema:
            return self.ema[path]
        return self.values.get(path)

    @property
    def num_classes(self):
        bias = self.values.get("predictions/bias")
        return None if bias is None else int(bias.shape[0])


def is_run_checkpoint(path):
    """Whether the checkpoint ``path`` is one of ours (a ``model`` in its object graph)."""
    return "model" in _root_names(path)


def saved_shapes(path):
    """{variable path: shape} of the model weights in our checkpoint ``path``, without reading them."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    return {name: tuple(shapes[key]) for name, key in _model_keys(path, reader).items()}


def read_weights(path):
    """The model weights (and their EMA) of our checkpoint ``path``, by variable path.

    For a model that is not the run's own (fine-tuning: another classifier, or none): the caller
    matches them by name. ``ValueError`` when ``path`` is not one of our checkpoints.
    """
    reader = tf.train.load_checkpoint(path)
    values = {name: reader.get_tensor(key) for name, key in _model_keys(path, reader).items()}
    ema = {name: reader.get_tensor(key) for name, key in _ema_keys(reader, values).items()}
    return CheckpointWeights(prefix=path, values=values, ema=ema)


def restore_model(path, model, use_ema=True):
    """Restores ``model`` (the run's architecture) from our checkpoint ``path``; whether the EMA
    weights were swapped in.

    The model's weights are restored as training restores them (``tf.train.Checkpoint``, every
    weight matched); then, with ``use_ema``, the trainable ones are given their EMA when the
    checkpoint has one for each (a run trained without EMA keeps its training weights), and the
    batch-norm statistics their averages where the checkpoint has them.
    """
    _check_same_weights(saved_shapes(path), model)
    _restore_objects(path, {"model": model}, partial=True)
    if not use_ema:
        return False
    reader = tf.train.load_checkpoint(path)
    keys = _ema_keys(reader, {v.path for v in model.weights})
    if not keys or any(v.path not in keys for v in model.trainable_weights):
        return False
    for variable in model.weights:
        if variable.path in keys:
            variable.assign(np.asarray(reader.get_tensor(keys[variable.path])).astype(variable.dtype))
    return True


def _check_same_weights(saved, model):
    """``ValueError`` naming what differs unless ``saved`` ({path: shape}) has exactly ``model``'s
    weights. The object restore matches a functional model's layers by position; this makes sure
    that position and name agree before anything is assigned."""
    ours = {v.path: tuple(v.shape) for v in model.weights}
    variables = {v.path for v in model.variables}  # Also random-generator states.
    missing = [p for p in ours if p not in saved]
    wrong = [f"{p}: {saved[p]} in the checkpoint, {ours[p]} in the model" for p in ours
             if p in saved and tuple(saved[p]) != ours[p]]
    extra = sorted(p for p in saved if p not in variables)
    if missing or wrong or extra:
        parts = [f"{len(items)} {what}: {_few(items)}" for items, what in (
            (missing, "weight(s) missing"), (wrong, "of the wrong shape"),
            (extra, "weight(s) the model does not have")) if items]
        raise ValueError(f"the checkpoint does not match model {model.name!r}: {'; '.join(parts)}")


def _few(items, n=5):
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _object_graph(reader):
    """The checkpoint's object graph (TensorFlow's ``TrackableObjectGraph``), or None without one."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: PLC0415

    if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
        return None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return graph


def _root_names(path):
    """The names saved at the top of the checkpoint ``path`` (``model``, ``optimizer``, ``ema``, ...)."""
    graph = _object_graph(tf.train.load_checkpoint(path))
    return {c.local_name for c in graph.nodes[0].children} if graph else set()


def _variables_under(graph, node_ids, skip=()):
    """{variable name: checkpoint key} of every variable reachable from ``node_ids``, not following
    edges named in ``skip``. The name is the one TensorFlow saves for name-based reading (for a Keras
    variable, its path)."""
    seen, queue, found = set(node_ids), list(node_ids), {}
    while queue:
        node = graph.nodes[queue.pop()]
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE":
                found[attribute.full_name] = attribute.checkpoint_key
        for child in node.children:
            if child.node_id not in seen and child.local_name not in skip:
                seen.add(child.node_id)
                queue.append(child.node_id)
    return found


def _root_child(graph, name):
    return [c.node_id for c in graph.nodes[0].children if c.local_name == name]


def _model_keys(path, reader):
    """{variable path: checkpoint key} of the model's weights in our checkpoint ``path``."""
    graph = _object_graph(reader)
    model = _root_child(graph, "model") if graph else []
    if not model:
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' in its object graph)")
    # A compiled model tracks its optimizer; its slots and averages are not model weights.
    return _variables_under(graph, model, skip=("optimizer",))


def _ema_keys(reader, model_paths):
    """{variable path: checkpoint key} of the EMA weights in our checkpoint (empty without EMA)."""
    graph = _object_graph(reader)
    ema = _root_child(graph, "ema")
    if ema:  # Ours: ema/<variable path>.
        keys = {}
        for child in graph.nodes[ema[0]].children:
            for attribute in graph.nodes[child.node_id].attributes:
                if attribute.name == "VARIABLE_VALUE":
                    keys[child.local_name] = attribute.checkpoint_key
        return keys
    # Written before the ema entry: Keras names an EMA variable "<optimizer>/<path, '/' as '_'>_average".
    averages = {}
    for name, key in _variables_under(graph, _root_child(graph, "optimizer")).items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf.endswith("_average"):
            averages[leaf] = key
    found = {p: averages.get(p.replace("/", "_") + "_average") for p in model_paths}
    return {p: key for p, key in found.items() if key is not None}


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


def find_checkpoint(path):
    """The checkpoint prefix ``path`` designates: a prefix, a run folder or a checkpoint folder.

    Raises ``FileNotFoundError`` naming ``path`` when there is none.
    """
    if tf.io.gfile.exists(path + ".index"):
        return path
    if tf.io.gfile.isdir(path):
        for folder in (os.path.join(path, "checkpoints"), path):
            if not tf.io.gfile.isdir(folder):
                continue
            state, problem = read_index(folder)
            if state is not None:
                return _listed(state)[0]
            if problem is not None and _checkpoints_on_disk(folder):
                return _checkpoints_on_disk(folder)[0]
            indexes = sorted(tf.io.gfile.glob(os.path.join(folder, "*.index")))
            if len(indexes) == 1:
                return indexes[0][: -len(".index")]
            if indexes:
                raise FileNotFoundError(
                    f"{folder} holds several checkpoints ({_few(os.path.basename(i) for i in indexes)}) "
                    "and no 'checkpoint' index file; pass the prefix of the one to use"
                )
        raise FileNotFoundError(f"no checkpoint in {path} (nor in {os.path.join(path, 'checkpoints')})")
    raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index and no such folder)")


def checkpoint_candidates(directory):
    """The checkpoint prefixes in ``directory``, newest first: those its index (``checkpoint``) lists,
    or, without an index or with a damaged one (see ``read_index``), every ``ckpt-<N>`` with an
    ``.index`` file by decreasing N."""
    if not tf.io.gfile.isdir(directory):
        return []
    state, _ = read_index(directory)
    return (_listed(state) if state is not None else []) or _checkpoints_on_disk(directory)


def _listed(state):
    """The checkpoints an index lists, newest first."""
    listed = list(reversed(state.all_model_checkpoint_paths))
    if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
        listed.insert(0, state.model_checkpoint_path)
    return listed


def _checkpoints_on_disk(directory):
    indexes = tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index"))
    return [i[: -len(".index")] for i in sorted(indexes, key=_number, reverse=True)]


def read_index(directory, warn=True):
    """``(state, problem)`` of the checkpoint index ``directory/checkpoint``: ``(state, None)`` when it
    reads and names a checkpoint that exists; ``(None, None)`` without one; ``(None, problem)`` when it
    is damaged (empty, not text, naming only missing checkpoints), with a warning naming it: the
    checkpoints on disk are used instead, as a kill or a full disk must not cost a run its work."""
    index = os.path.join(directory, "checkpoint")
    if not tf.io.gfile.exists(index):
        return None, None
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (ValueError, UnicodeDecodeError, tf.errors.OpError) as e:
        state = None
        problem = "empty" if tf.io.gfile.stat(index).length == 0 else f"unreadable: {_reason(e, 120)}"
    else:
        listed = sorted({os.path.basename(p) for p in [*state.all_model_checkpoint_paths,
                                                          state.model_checkpoint_path] if p}) if state else []
        if any(tf.io.gfile.exists(os.path.join(directory, name) + ".index") for name in listed):
            return state, None
        problem = f"it names {_few(listed)}, not on disk" if listed else "it names no checkpoint"
        state = None
    if warn:
        on_disk = _checkpoints_on_disk(directory)
        logging.warning("Checkpoint index %s is damaged (%s); using the checkpoints on disk instead (%s).", index,
                        problem, _few(os.path.basename(p) for p in on_disk) if on_disk else "none")
    return state, problem


def _repair_index(directory):
    """Rewrites a damaged index (``read_index``) from the checkpoints on disk, so that
    ``tf.train.CheckpointManager``, which reads it when built, can be built; a no-op otherwise."""
    _, problem = read_index(directory, warn=False)
    if problem is None:
        return
    on_disk, index = _checkpoints_on_disk(directory), os.path.join(directory, "checkpoint")
    if on_disk:
        from tensorflow.python.checkpoint import checkpoint_management  # noqa: PLC0415 TF's own writer

        checkpoint_management.update_checkpoint_state_internal(
            directory, on_disk[0], list(reversed(on_disk)), save_relative_paths=True)
        logging.warning("Checkpoint index %s was damaged (%s); rewrote it from the checkpoints on disk (%s).", index,
                        problem, _few(os.path.basename(p) for p in on_disk))
    else:  # It names nothing there is; without it the folder reads as one without checkpoints.
        tf.io.gfile.remove(index)
        logging.warning("Checkpoint index %s was damaged (%s) and no checkpoint is on disk; removed it.", index,
                        problem)


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
