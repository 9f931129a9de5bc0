"""Progressive learning with adaptive regularization, as a Keras callback that owns the stages.

Keras 3's ``fit`` builds its data iterator once per call, so no callback can swap the dataset in
the middle of a call. The trainer therefore calls ``fit`` once per epoch and this callback is in
charge at every call boundary:

1. ``dataset_for_epoch(e)``: epoch ``e``'s training data at its stage's image size, RandAugment
   magnitude and mixup alpha (one static size per stage, so TPUs get static shapes).
2. ``on_epoch_begin(e)``: at a stage boundary (or the first epoch after a restart) it sets the head
   dropout and the EMA's decay per step and rebuilds the train function, traced once per stage.
   (Without the rebuild, Keras' ``reduce_retracing`` would relax the image size to ``None`` and
   keep the old dropout rate.)
3. ``on_epoch_end(e)``: adds the stage's parameters to the epoch's logs.

``progressive_fit.train_epochs`` makes those calls, with ``epoch_callbacks(e)`` at the head of each
call's callbacks: the trainer (``loop``) and the library call (``progressive_fit.fit``) both run on it.

Everything is a function of the epoch number (``schedules``), so a restart inside stage ``i``
resumes with stage ``i``'s parameters. A stage with a larger batch (``progressive.batch_scaling``)
takes fewer steps; its EMA decay per step becomes ``decay ** (stage batch / final batch)``, so the
average spans the same number of images in every stage.

``StageImages`` writes a few augmented training images to TensorBoard at the start of each stage.
"""

from absl import logging
import keras
import tensorflow as tf

from efficientnetv2.train import keras_compat, schedules
from efficientnetv2.model import set_dropout_rate

__all__ = ["ProgressiveLearning", "StageImages"]


class ProgressiveLearning(keras.callbacks.Callback):
    """Applies the stage of each epoch: data (image size, RandAugment, mixup) and head dropout.

    Args:
        stages: the ``StageParams`` of every stage (``schedules.stage_params``).
        total_epochs: the run's epochs; ``schedules.stage_epochs`` splits them between the stages.
        dataset_fn: ``dataset_fn(params, epoch, skip_steps) -> dataset`` builds one epoch's training
            data, without its first ``skip_steps`` steps (a run resumed inside the epoch).
        ema_decay: the EMA decay per step at the last stage's batch (0 or None: no EMA to adjust).
        dropout_layers: the ``Dropout`` layers whose rate follows the stage; None: the model's
            ``top_dropout`` (``set_dropout_rate``).
    """

    def __init__(self, stages, total_epochs, dataset_fn, ema_decay=None, dropout_layers=None):
        super().__init__()
        self.dropout_layers = None if dropout_layers is None else tuple(dropout_layers)
        self.stages = list(stages)
        self.total_epochs = int(total_epochs)
        self.bounds = schedules.stage_epochs(self.total_epochs, len(self.stages))
        self.dataset_fn = dataset_fn
        self.ema_decay = ema_decay
        self.applied = None  # the StageParams the model's train function was built for

    def stage_for_epoch(self, epoch):
        return self.stages[schedules.stage_of_epoch(epoch, self.total_epochs, len(self.stages))]

    def dataset_for_epoch(self, epoch, skip_steps=0):
        return self.dataset_fn(self.stage_for_epoch(epoch), epoch, skip_steps)

    def epoch_callbacks(self, epoch, skip_steps=0):
        """The callbacks that head each ``model.fit`` call's list: a progress bar that places the epoch in the
        run (``keras_compat.EpochProgbar``), then this callback."""
        params = self.stage_for_epoch(epoch)
        header = (f"Epoch {epoch + 1}/{self.total_epochs} (stage {params.stage + 1}/{params.num_stages}, "
                  f"{params.image_size} px" + (f", resumed at step {skip_steps}" if skip_steps else "") + ")")
        return [keras_compat.EpochProgbar(header), self]

    def starts_stage(self, epoch):
        """Whether ``epoch`` is the first of its stage."""
        return schedules.starts_stage(epoch, self.total_epochs, len(self.stages))

    def ema_decay_for(self, params):
        """The EMA decay per step of a stage: the same images averaged over at every batch size."""
        final_batch = self.stages[-1].batch_size
        if not self.ema_decay or params.batch_size is None or params.batch_size == final_batch:
            return self.ema_decay
        return self.ema_decay ** (params.batch_size / final_batch)

    def on_epoch_begin(self, epoch, logs=None):
        params = self.stage_for_epoch(epoch)
        if params == self.applied:
            return
        start, end = self.bounds[params.stage]
        logging.info(
            "Stage %d/%d (epochs %d-%d): image size %d px, global batch %s (learning rate x %.3g), "
            "RandAugment magnitude %.1f, mixup alpha %.2f, dropout %.2f",
            params.stage + 1,
            params.num_stages,
            start + 1,
            end,
            params.image_size,
            params.batch_size,
            params.learning_rate_scale,
            params.randaug_magnitude,
            params.mixup_alpha,
            params.dropout_rate,
        )
        if self.dropout_layers is None:
            set_dropout_rate(self.model, params.dropout_rate)
        for layer in self.dropout_layers or ():
            layer.rate = float(params.dropout_rate)  # read when the train step is traced
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer
        if self.ema_decay and getattr(optimizer, "use_ema", False):
            optimizer.ema_momentum = self.ema_decay_for(params)  # read when the train step is traced
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
            **({} if params.batch_size is None else {"batch_size": float(params.batch_size)}),
            randaug_magnitude=params.randaug_magnitude,
            mixup_alpha=params.mixup_alpha,
            dropout_rate=params.dropout_rate,
        )



class StageImages:
    """Writes augmented training images to TensorBoard (``tf.summary.image``) in ``directory``, tagged
    ``augmented_images`` at the global step, described by the stage's size, magnitude and alpha."""

    def __init__(self, directory):
        self.writer = tf.summary.create_file_writer(directory)

    def write(self, images, params, step):
        if images is None:
            return
        description = (f"Stage {params.stage + 1}/{params.num_stages}: {params.image_size} px, RandAugment "
                       f"magnitude {params.randaug_magnitude:.1f}, mixup alpha {params.mixup_alpha:.2f}")
        with self.writer.as_default():
            tf.summary.image("augmented_images", images, step=step, max_outputs=int(images.shape[0]),
                             description=description)
        self.writer.flush()
        logging.info("%s: %d augmented training images written to TensorBoard at step %d.", description,
                     int(images.shape[0]), step)
