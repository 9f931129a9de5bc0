"""Where Keras (3.15.1, with TensorFlow 2.21) gets in the trainer's way: every workaround in one place.

Each workaround says the Keras version it was found with, the symptom, the upstream issue, and where
it is applied. ``tests/test_keras_compat.py`` holds a canary for each: it reproduces the symptom with
plain Keras and asserts that it still happens, so the canary fails on the Keras release that fixes it,
and the workaround can then go.

- ``fix_multi_worker_fit``: two bugs of ``fit`` under MultiWorkerMirroredStrategy with more than one
  worker (``build_compiled_from_symbolic_batch``, ``give_logs_a_batch_axis``); applied there only.
- ``KeepTrainingWeightsAtEndOfFit``: ``fit`` ends by overwriting the weights with their EMA; mixed
  into the project's optimizers.
- ``EpochProgbar``: the progress bar's header when ``fit`` trains one epoch of a longer run, and its
  count past the end with ``steps_per_execution`` > 1.
- ``RunTensorBoard``: Keras' TensorBoard callback opens new event files at every ``fit`` call; this
  one keeps one set per run. Used by the trainer.
- ``skip_empty_batches_in_evaluation``: a replica given an empty batch (the uneven end of an
  evaluation under a strategy with several replicas) fails inside the model; applied to the models
  the trainer compiles under such a strategy (one device never gets an empty batch).
"""

import sys

import keras

__all__ = ["multi_worker", "fix_multi_worker_fit", "build_compiled_from_symbolic_batch",
           "give_logs_a_batch_axis", "KeepTrainingWeightsAtEndOfFit", "EpochProgbar", "RunTensorBoard",
           "skip_empty_batches_in_evaluation"]


def multi_worker(strategy):
    """True for MultiWorkerMirroredStrategy with more than one worker: the strategies Keras sends
    down its multi-worker reduction path (``_collective_all_reduce_multi_worker`` in Keras'
    TensorFlow trainer), where both bugs of ``fix_multi_worker_fit`` live."""
    import tensorflow as tf  # noqa: PLC0415 (only the TensorFlow trainer asks; the rest is backend-agnostic)

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def fix_multi_worker_fit(model, strategy, data_batch):
    """Applies the two multi-worker workarounds to a compiled ``model`` where they are needed: under
    ``multi_worker(strategy)`` only. ``data_batch`` is a symbolic ``(x, y)`` batch
    (``keras.KerasTensor``s) to build the compiled loss and metrics from. Returns whether it applied
    them. MirroredStrategy, single-worker MultiWorkerMirroredStrategy and the default strategy train
    with plain Keras."""
    if not multi_worker(strategy):
        return False
    build_compiled_from_symbolic_batch(model, data_batch)
    give_logs_a_batch_axis(model)
    return True


def build_compiled_from_symbolic_batch(model, data_batch):
    """Builds the model's compiled loss and metrics from a symbolic batch, and turns off the build
    that ``fit``/``evaluate`` would do from the first distributed batch.

    The trainer also calls it under every other strategy, not as a workaround: its training batches'
    first element can be (uint8 images, mixing plan), which the train step turns into the model's
    input (``compilation.mix_in_the_train_step``) but Keras' build would pass to the model as it is.

    Found with Keras 3.15.1: under MultiWorkerMirroredStrategy with 2 workers, ``fit`` first builds
    the compiled loss and metrics from the first batch, averaged over the replicas with
    ``strategy.reduce("MEAN", batch, axis=None)`` (``_maybe_symbolic_build`` in Keras' TensorFlow
    trainer), which fails: "ValueError: Attempt to convert a value (PerReplica:{...}) with an
    unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>) to a Tensor."
    A single-worker MultiWorkerMirroredStrategy and MirroredStrategy do not fail.
    Upstream: no issue with this exact symptom found (Keras 3.15.1); the open umbrella issue
    "Does Keras 3 work with tf.distribute.MultiWorkerMirroredStrategy?" is
    https://github.com/keras-team/keras/issues/20585 (its example, the TensorFlow multi-worker
    tutorial, fails in ``fit``).
    """
    model._symbolic_build(data_batch=data_batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def give_logs_a_batch_axis(model):
    """Makes the model's train and test steps return logs of shape [1] instead of scalars.

    Found with Keras 3.15.1: under MultiWorkerMirroredStrategy with 2 workers, ``fit`` reduces the
    step's logs with ``strategy.reduce("MEAN", v, axis=0)`` (``reduce_per_replica`` in Keras'
    TensorFlow trainer), which fails on the scalar loss and metrics: "ValueError: Invalid reduction
    dimension 0 for input with 0 dimensions." Logs of shape [1] reduce to the mean over the
    workers, a scalar, as on every other strategy.
    Upstream: https://github.com/tensorflow/tensorflow/issues/72388 (this exact error, Keras 3 with
    multi-worker tf.distribute; closed there as a Keras issue) and the open
    https://github.com/keras-team/keras/issues/20585.
    """
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def with_axis(data, _step=step):
            return {k: keras.ops.expand_dims(v, 0) for k, v in _step(data).items()}

        setattr(model, name, with_axis)


class KeepTrainingWeightsAtEndOfFit:
    """Optimizer mixin: ``finalize_variable_values`` keeps the training weights.

    Found with Keras 3.15.1: with ``use_ema=True``, ``fit`` ends by calling the optimizer's
    ``finalize_variable_values``, which overwrites the model's weights with their moving average.
    Keras documents this ("When using the built-in fit() training loop, this happens automatically
    after the last epoch"); it is no bug for one ``fit`` per run, but the trainer calls ``fit`` once
    per epoch, so every epoch would restart from the averaged weights. The EMA weights are swapped
    in explicitly where they are used (``optimizers.swap_ema_weights``).
    Upstream: no issue asking for a way to keep the weights at the end of ``fit`` found (Keras
    3.15.1); the related discussion of EMA during ``fit`` is
    https://github.com/keras-team/keras/issues/18949 (it led to ``keras.callbacks.SwapEMAWeights``,
    which does not stop the overwrite).
    """

    def finalize_variable_values(self, var_list):
        """Keeps the training weights: EMA weights are swapped in explicitly where they are used."""


class EpochProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar under a header that places the epoch in the run.

    Found with Keras 3.15.1: ``ProgbarLogger`` heads each epoch with "Epoch {epoch + 1}/{epochs}" of
    the ``fit`` call, and only when that call has more than one epoch. The trainer calls
    ``fit(initial_epoch=e, epochs=e + 1)`` once per epoch, so its header reads "Epoch 3/3" in epoch 3
    of a 350-epoch run. Not a Keras bug (``fit`` knows only its own epochs). This class prints
    ``header`` instead and keeps Keras' own header off by telling it of one epoch.
    Upstream: no issue found (Keras 3.15.1).

    Also found with Keras 3.15.1: with ``steps_per_execution`` = n, ``on_train_batch_end`` gets the
    index of an execution's last step, ``begin + n - 1`` for the epoch's last, partial execution too
    (``EpochIterator._enumerate_iterator``), so the bar shows e.g. "12/10" before its final "10/10".
    This class caps the index at the epoch's last step. Upstream: no issue found (Keras 3.15.1).
    Its canary is in ``tests/test_steps_per_execution.py`` with the trainer's other uses of the index.

    Also found with Keras 3.15.1: an epoch stopped early (``model.stop_training`` set by the trainer's
    preemption or non-finite-loss handling) still ends its bar at the target, "20/20" after one step,
    with the time per step divided by 20 (``ProgbarLogger._finalize_progbar``). This class ends it
    where the epoch stopped. Upstream: no issue found (Keras 3.15.1); canary in
    ``tests/test_keras_compat.py``.
    """

    def __init__(self, header):
        super().__init__()
        self.header = header

    def set_params(self, params):
        super().set_params(params)
        self.epochs = 1  # Keras prints its header only for several epochs.

    def on_epoch_begin(self, epoch, logs=None):
        if self.verbose:
            sys.stdout.write(self.header + "\n")
            sys.stdout.flush()
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.target is not None:
            batch = min(batch, self.target - 1)
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.target is None or self.seen >= self.target:
            super().on_epoch_end(epoch, logs)
        elif self.seen:  # Stopped early: the bar ends where the epoch did (no bar before a first step).
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=True)


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback with one events file per run instead of one per ``fit`` call.

    Found with Keras 3.15.1: ``set_model``, called at the start of every ``fit``, drops the callback's
    summary writers and writes the model's summary (its config, 40 KB for S) again, and
    ``on_train_end`` closes the writers. The trainer calls ``fit`` once per epoch, so ``logs/train``
    got a new events file every epoch (350 for an ImageNet run), each with its own copy of the
    summary. Not a Keras bug (``fit`` is meant to be called once per run). Here the writers and the
    summary outlive the calls: ``fit`` ends with a flush, and ``close()`` closes the files at the end
    of the run. Upstream: no issue found (Keras 3.15.1).
    """

    def set_model(self, model):
        if model is not self._model:  # The first fit of the run: Keras' own set-up.
            super().set_model(model)

    def _close_writers(self):  # At the end of each fit.
        for writer in self._writers.values():
            writer.flush()

    def close(self):
        """Closes the events files; the run's last call."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def skip_empty_batches_in_evaluation(model):
    """Makes ``model.test_step`` skip a batch of 0 examples (it returns the metrics as they are).

    Found with TensorFlow 2.21 / Keras 3.15.1: under MirroredStrategy (and MultiWorkerMirroredStrategy)
    ``evaluate`` over data whose size is not a multiple of the global batch hands the replicas without
    examples left an empty batch, and a convolution followed by batch normalization fails on it inside
    ``tf.function``: "Incompatible shapes: [8] vs. [0,48,48,3] [[{{node replica_1/.../stem_bn_1/
    batchnorm/mul_1}}]]" (the empty convolution output keeps its input's channels). Eagerly, and a
    batch-norm layer alone, are fine. Upstream: no issue found (Keras 3.15.1). Apply it before
    ``fix_multi_worker_fit`` (whose log reshaping then wraps this step).
    """
    import tensorflow as tf  # noqa: PLC0415 (only the TensorFlow trainer asks)

    step = model.test_step

    def test_step(data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        size = tf.shape(tf.nest.flatten(x)[0])[0]
        return tf.cond(size > 0, lambda: step(data), model.get_metrics_result)

    model.test_step = test_step
    return model
