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

from efficientnetv2.train import schedules
from efficientnetv2.model import set_dropout_rate

__all__ = ["ProgressiveLearning"]


class ProgressiveLearning(keras.callbacks.Callback):
    """Applies the stage of each epoch: data (image size, RandAugment, mixup) and head dropout.

    Args:
        stages: the ``StageParams`` of every stage (``schedules.stage_params``).
        total_epochs: the run's epochs; ``schedules.stage_epochs`` splits them between the stages.
        dataset_fn: ``dataset_fn(params, epoch, skip_steps) -> dataset`` builds one epoch's training
            data, without its first ``skip_steps`` steps (a run resumed inside the epoch).
    """

    def __init__(self, stages, total_epochs, dataset_fn):
        super().__init__()
        self.stages = list(stages)
        self.total_epochs = int(total_epochs)
        self.bounds = schedules.stage_epochs(self.total_epochs, len(self.stages))
        self.dataset_fn = dataset_fn
        self.applied = None  # the StageParams the model's train function was built for

    def stage_for_epoch(self, epoch):
        return self.stages[schedules.stage_of_epoch(epoch, self.total_epochs, len(self.stages))]

    def dataset_for_epoch(self, epoch, skip_steps=0):
        return self.dataset_fn(self.stage_for_epoch(epoch), epoch, skip_steps)

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

