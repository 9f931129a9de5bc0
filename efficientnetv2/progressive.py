"""Progressive learning with adaptive regularization, as a Keras callback that owns the stages.

The mechanism, and why. Keras 3's ``fit`` builds its data iterator once per call, so no callback can
swap the dataset in the middle of a call. The trainer therefore calls ``fit`` once per epoch
(``initial_epoch=e, epochs=e + 1``) and this callback is in charge at every call boundary:

1. ``dataset_for_epoch(e)``: the trainer asks the callback for epoch ``e``'s training data; the
   callback builds it with its stage's image size, RandAugment magnitude and mixup alpha (through
   ``dataset_fn``; under a ``tf.distribute`` strategy via ``distribute_datasets_from_function``). Each
   stage has one static image size, so TPUs get static shapes.
2. ``on_epoch_begin(e)``: at a stage boundary (or the first epoch after a restart) it sets the head
   dropout rate and rebuilds the model's train function (``make_train_function(force=True)``). The
   rebuilt function is traced once, on the first step of the stage, with the stage's image size and
   dropout; every later epoch of the stage reuses it. (Without the rebuild, Keras' ``reduce_retracing``
   would relax the image size to ``None`` at the second size and never trace again, keeping the old
   dropout rate.)
3. ``on_epoch_end(e)``: adds ``stage``, ``image_size``, ``randaug_magnitude``, ``mixup_alpha`` and
   ``dropout_rate`` to the epoch's logs, so the progress bar, TensorBoard and the CSV log show them.

All four take effect at the first step of the new stage. Restarting inside stage ``i`` resumes with
stage ``i``'s parameters because everything is a function of the epoch number (``schedules``).
"""

from absl import logging
import keras

from efficientnetv2.model import set_dropout_rate

__all__ = ["ProgressiveLearning"]


class ProgressiveLearning(keras.callbacks.Callback):
    """Applies the stage of each epoch: data (image size, RandAugment, mixup) and head dropout.

    Args:
        stages: the ``StageParams`` of every stage (``schedules.stage_params``).
        bounds: ``[(first_epoch, end_epoch), ...]`` of every stage (``schedules.stage_epochs``).
        dataset_fn: ``dataset_fn(params, epoch) -> dataset`` builds one epoch's training data.
    """

    def __init__(self, stages, bounds, dataset_fn):
        super().__init__()
        if len(stages) != len(bounds):
            raise ValueError(f"{len(stages)} stages but {len(bounds)} stage bounds")
        self.stages = list(stages)
        self.bounds = list(bounds)
        self.dataset_fn = dataset_fn
        self.applied = None  # the StageParams the model's train function was built for
        self.total_epochs = self.bounds[-1][1]

    def stage_index(self, epoch):
        for index, (start, end) in enumerate(self.bounds):
            if start <= epoch < end:
                return index
        raise ValueError(f"epoch {epoch} is outside the schedule [0, {self.total_epochs})")

    def stage_for_epoch(self, epoch):
        return self.stages[self.stage_index(epoch)]

    def dataset_for_epoch(self, epoch):
        return self.dataset_fn(self.stage_for_epoch(epoch), epoch)

    def on_epoch_begin(self, epoch, logs=None):
        params = self.stage_for_epoch(epoch)
        if params == self.applied:
            return
        start, end = self.bounds[params.stage]
        logging.info(
            "Stage %d/%d (epochs %d-%d): image size %d px, RandAugment magnitude %.1f, "
            "mixup alpha %.2f, dropout %.2f",
            params.stage + 1,
            params.num_stages,
            start + 1,
            end,
            params.image_size,
            params.randaug_magnitude,
            params.mixup_alpha,
            params.dropout_rate,
        )
        set_dropout_rate(self.model, params.dropout_rate)
        if getattr(self.model, "train_function", None) is not None:
            self.model.make_train_function(force=True)
        self.applied = params

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        params = self.stage_for_epoch(epoch)
        logs.update(
            stage=float(params.stage + 1),
            image_size=float(params.image_size),
            randaug_magnitude=params.randaug_magnitude,
            mixup_alpha=params.mixup_alpha,
            dropout_rate=params.dropout_rate,
        )

