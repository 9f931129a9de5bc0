"""Progressive learning for any compiled Keras model: ``fit(model, data, epochs, schedule)``.

    schedule = progressive_fit.paper_schedule("b0", num_stages=4)   # or make_schedule(...)
    history = progressive_fit.fit(model, data_fn, epochs=20, schedule=schedule)

The paper's training method (Tan & Le 2021, Algorithm 1) as a library call: each stage trains at its
image size, RandAugment magnitude and mixup alpha, with its dropout rate on the model's head. The
stages are ``schedules.stage_params`` and the per-epoch work is the trainer's own
``progressive.ProgressiveLearning`` callback, so the stage lookup exists once.

Its epochs run in ``train_epochs``, which calls ``model.fit`` once per epoch, because Keras builds
its data iterator once per call and each stage has data of its own size; the callback rebuilds the
train function at each stage's first epoch, so it is traced once per stage. The project's trainer
(``loop``) runs its epochs in ``train_epochs`` too, adding through ``EpochHooks`` what a long run
needs (steps per stage, a resume inside an epoch, checkpoints, stop rules, logs), so the stage
lookup, the per-stage data and the callback exist once. Under ``fit`` the user's callbacks see one
run: their ``on_train_begin`` and ``on_train_end`` run once, ``model.stop_training`` (e.g.
``EarlyStopping``) ends the run, and one ``History`` holds every epoch.
"""

from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.train import progressive, schedules
from efficientnetv2.variants import get_variant
import keras
import tensorflow as tf

__all__ = ["fit", "make_schedule", "paper_schedule", "train_epochs", "EpochHooks"]


def make_schedule(num_stages, image_size, randaug_magnitude=(5.0, 10.0), mixup_alpha=(0.0, 0.0),
                  dropout_rate=(0.1, 0.2), round_image_size_to=8):
    """The ``StageParams`` of ``num_stages`` stages, each quantity from its first stage's value to its
    last's (``(start, end)`` pairs; the defaults past ``image_size`` are B0's in the paper's table)."""
    spec = schedules.ProgressiveSpec(image_size=tuple(image_size), randaug_magnitude=tuple(randaug_magnitude),
                                     mixup_alpha=tuple(mixup_alpha), dropout_rate=tuple(dropout_rate),
                                     round_image_size_to=round_image_size_to)
    return tuple(schedules.stage_params(i, num_stages, spec) for i in range(num_stages))


def paper_schedule(variant, num_stages=4, image_size=None):
    """The paper's schedule of ``variant`` ("b0" ... "xl"): its image sizes (or ``image_size`` as a
    ``(start, end)`` pair), RandAugment magnitudes, mixup alphas and dropout rates."""
    spec = get_variant(variant)
    return make_schedule(num_stages, image_size or (spec.image_size.start, spec.image_size.end),
                         (spec.randaug_magnitude.start, spec.randaug_magnitude.end),
                         (spec.mixup_alpha.start, spec.mixup_alpha.end), (spec.dropout.start, spec.dropout.end))


def fit(model, data, epochs, schedule, *, batch_size=None, validation_data=None, callbacks=(),
        dropout_layers=None, seed=0, verbose="auto"):
    """Trains the compiled ``model`` for ``epochs`` epochs through the stages of ``schedule``.

    Args:
        model: a compiled Keras model whose image input (channels last) takes any height and width,
            e.g. ``keras.applications.EfficientNetV2B0(input_tensor=keras.Input((None, None, 3)))``
            (keras.applications refuses ``input_shape=(None, None, 3)`` with its classifier on).
        data: one of
            - a function ``(image_size, randaug_magnitude, mixup_alpha, epoch) -> tf.data.Dataset``
              of one epoch of ``(images [B, image_size, image_size, C], targets)`` batches;
            - a ``datasets.Source``, or a folder as ``--data_dir`` takes it: the project's pipeline
              (``datasets.build_train_dataset``) makes each epoch, ``batch_size`` images a batch,
              float32 images in [0, 255] (mixed when mixup is on) and one-hot labels.
        epochs: the run's epochs; ``schedules.stage_epochs`` splits them between the stages.
        schedule: the stages' ``StageParams`` (``make_schedule``, ``paper_schedule``).
        batch_size: the batch of the project's pipeline (a function's data brings its own).
        validation_data, verbose: as ``model.fit`` takes them.
        callbacks: Keras callbacks, called as in one ``model.fit`` over all the epochs.
        dropout_layers: the names of the ``Dropout`` layers whose rate follows the stage; None: the
            model's last ``Dropout`` (keras.applications' ``top_dropout``); ``()``: none.
        seed: the project's pipeline's seed (its epochs are a pure function of seed and epoch).

    Returns:
        One ``keras.callbacks.History`` for the whole run; its logs carry each epoch's stage,
        image size, RandAugment magnitude, mixup alpha and dropout rate.
    """
    schedule = tuple(schedule)
    if getattr(model, "optimizer", None) is None:
        raise ValueError(f"model {model.name!r} is not compiled; call model.compile(optimizer, loss) first")
    _check_flexible_input(model, schedule)
    if model.built and not model.optimizer.built:
        # Else its variables are made in the first train step, and tf.function traces a call that
        # makes variables twice: two traces in the first stage.
        model.optimizer.build(model.trainable_variables)
    layers = _dropout_layers(model, dropout_layers, schedule)
    make_data = data if callable(data) else _pipeline_data(data, batch_size, seed)
    checked = set()  # the stages whose first batch's image size was checked

    def dataset_fn(params, epoch, skip_steps=0):
        dataset = make_data(params.image_size, params.randaug_magnitude, params.mixup_alpha, epoch)
        if params.stage not in checked:
            _check_image_size(dataset, params)
            checked.add(params.stage)
        return dataset.skip(skip_steps)

    stages = progressive.ProgressiveLearning(schedule, epochs, dataset_fn, dropout_layers=layers)
    history = _RunHistory()
    for c in callbacks:
        c.set_model(model)
        c.on_train_begin()
    train_epochs(model, stages, 0, epochs, EpochHooks([history] + [_OncePerRun(c) for c in callbacks]),
                 validation_data=validation_data, verbose=verbose)
    last_logs = {k: v[-1] for k, v in history.history.items() if v}
    for c in callbacks:
        c.on_train_end(last_logs)
    return history


class EpochHooks:
    """What a caller of ``train_epochs`` adds around each epoch: here, ``callbacks`` in every epoch.

    The trainer (``loop``) overrides the methods for its steps per stage, monitor, checkpoints,
    stop rules and logs. A hook ends the run by raising, or by setting ``model.stop_training``
    (the run ends after ``end_epoch``).
    """

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def epoch_steps(self, params):
        """The steps of a whole epoch of stage ``params``; None: to the end of its data."""
        return None

    def begin_epoch(self, epoch, params, skip_steps):
        """Before the epoch's ``fit`` (of which ``skip_steps`` steps were trained before a resume):
        the Keras callbacks it adds, after the stage's own."""
        return list(self.callbacks)

    def fit_failed(self, error, epoch, params):
        """An error of the epoch's ``fit``: raise a clearer one, or return to let it through."""

    def end_epoch(self, epoch, params, logs):
        """After the epoch's ``fit``, with its last logs (a dict the hook may add to)."""


def train_epochs(model, stages, first_epoch, end_epoch, hooks=None, *, skip_steps=0, validation_data=None,
                 verbose="auto"):
    """Trains epochs ``first_epoch`` to ``end_epoch`` - 1 at their stages, one ``model.fit`` each (see the
    module docstring); the first without its first ``skip_steps`` steps (a run resumed inside it).

    ``stages`` is a ``progressive.ProgressiveLearning``: each epoch's stage, data and callbacks come from
    it. Returns the epoch after the last one trained.
    """
    hooks = hooks or EpochHooks()
    epoch = first_epoch
    while epoch < end_epoch:
        params = stages.stage_for_epoch(epoch)
        steps = hooks.epoch_steps(params)
        callbacks = stages.epoch_callbacks(epoch, skip_steps) + hooks.begin_epoch(epoch, params, skip_steps)
        try:
            history = model.fit(stages.dataset_for_epoch(epoch, skip_steps), initial_epoch=epoch, epochs=epoch + 1,
                                steps_per_epoch=None if steps is None else steps - skip_steps,
                                validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                                shuffle=False)
        except Exception as error:
            hooks.fit_failed(error, epoch, params)
            raise
        hooks.end_epoch(epoch, params, {k: float(v[-1]) for k, v in history.history.items() if v})
        epoch, skip_steps = epoch + 1, 0
        if model.stop_training:
            break
    return epoch


def _pipeline_data(data, batch_size, seed):
    """The project's pipeline as a data function: ``data`` is a Source or a folder."""
    datasets = input_pipeline()
    if not isinstance(data, datasets.Source) and not isinstance(data, str):
        raise ValueError(f"data={data!r}: expected a function (image_size, randaug_magnitude, mixup_alpha, "
                         "epoch) -> tf.data.Dataset, a datasets.Source or a data folder")
    if batch_size is None:
        raise ValueError("the project's pipeline needs batch_size: pass fit(..., batch_size=N)")
    source = data if isinstance(data, datasets.Source) else datasets.get_source("auto", data)
    steps = datasets.steps_per_epoch(source, batch_size)

    def make(image_size, randaug_magnitude, mixup_alpha, epoch):
        dataset = datasets.build_train_dataset(source, batch_size=batch_size, image_size=image_size,
                                               randaug_magnitude=randaug_magnitude, mixup_alpha=mixup_alpha,
                                               seed=seed, epoch=epoch)
        # As the trainer's: a known number of steps, a short epoch (undecodable images) repeating from its start.
        dataset = dataset.repeat().take(steps)
        # Mixed on the host here: the trainer's train step mixes on the device, a user's model does not.
        return dataset.map(lambda x, y: (datasets.mixing.mixed_images(x), y), num_parallel_calls=tf.data.AUTOTUNE)

    return make


def _check_flexible_input(model, schedule):
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, ValueError, IndexError, TypeError):
        return  # not built yet: it takes the first batch's shape, whatever it is
    sizes = sorted({p.image_size for p in schedule})
    fixed = [d for d in shape[1:3] if d is not None]
    if fixed and any(d != s for d in fixed for s in sizes):
        raise ValueError(f"model {model.name!r} takes images of fixed size {shape[1:3]}, but the schedule "
                         f"trains at {sizes} px; build it with input_shape=(None, None, 3) (keras.applications with "
                         "include_top: input_tensor=keras.Input((None, None, 3)))")


def _all_layers(layer):
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _all_layers(child)


def _dropout_layers(model, names, schedule):
    """The ``Dropout`` layers whose rate follows the stages (see ``fit``)."""
    names = (names,) if isinstance(names, str) else names
    dropouts = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.Dropout)]
    if names is None:
        if dropouts:
            names = [dropouts[-1].name]
        elif len({p.dropout_rate for p in schedule}) > 1:
            raise ValueError(f"model {model.name!r} has no Dropout layer for the schedule's dropout rates; "
                             "pass dropout_layers=() to train without adjusting dropout")
        else:
            return ()
    by_name = {layer.name: layer for layer in dropouts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"dropout_layers {missing} are not Dropout layers of model {model.name!r}; "
                         f"its Dropout layers are {sorted(by_name)}")
    layers = [by_name[n] for n in names]
    for layer in layers:
        # Keras 3 gives a Dropout layer built with rate 0 no random seed, so a later rate fails.
        if not hasattr(layer, "seed_generator") and any(p.dropout_rate > 0 for p in schedule):
            raise ValueError(f"Dropout layer {layer.name!r} was built with rate 0, so Keras gave it no "
                             "random seed; build it with a rate > 0 (the schedule sets the rate)")
    return layers


def _check_image_size(dataset, params):
    """Refuses data whose first batch's images are not the stage's size."""
    spec = tf.nest.flatten(dataset.element_spec)[0]
    size = tuple(spec.shape[1:3])
    if None in size:
        for batch in dataset.take(1):
            size = tuple(tf.nest.flatten(batch)[0].shape[1:3])
    expected = (params.image_size, params.image_size)
    if size != expected:
        raise ValueError(f"stage {params.stage + 1}/{params.num_stages} trains at {params.image_size} px, "
                         f"but the data function's first batch has images of {size[0]}x{size[1]}; "
                         f"resize them to the image_size it is given")


class _RunHistory(keras.callbacks.History):
    """One History over every ``model.fit`` call of the run (Keras' clears its epochs at each call)."""

    def __init__(self):
        super().__init__()
        self.epoch = []

    def on_train_begin(self, logs=None):
        pass


class _OncePerRun(keras.callbacks.Callback):
    """A user's callback under ``fit``'s per-epoch ``model.fit`` calls: every hook but
    ``on_train_begin``/``on_train_end``, which ``fit`` calls once for the run."""

    def __init__(self, callback):
        super().__init__()
        self.callback = callback

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)


def _forward(hook):
    def call(self, *args, **kwargs):
        return getattr(self.callback, hook)(*args, **kwargs)

    call.__name__ = hook
    return call


for _hook in ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end", "on_test_begin",
              "on_test_end", "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
              "on_predict_batch_begin", "on_predict_batch_end"):
    setattr(_OncePerRun, _hook, _forward(_hook))
