"""The compiled model of a run: loss, metrics, learning-rate schedule, optimizer with EMA; precision and seed."""

import contextlib

import keras
import tensorflow as tf

from efficientnetv2.io.input_pipeline import input_pipeline
from efficientnetv2.train import keras_compat, multilabel, optimizers, schedules

datasets = input_pipeline()

__all__ = ["compile_model", "loss_and_metrics", "mix_in_the_train_step", "restored_dtype_policy",
           "setup_precision_and_seed"]


def loss_and_metrics(config, plan):
    # Per-step metrics stay cheap over 21k classes: top-1/top-5 of the argmax label (the reference's
    # acc_top1), and for multi-label data whether the top prediction is any of the image's labels.
    metrics = [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(k=min(5, plan.num_classes), name="top5"),
    ]
    if plan.multi_label:
        metrics.append(multilabel.TopOneInLabels(name="top1_any"))
    if config.train.loss == "sigmoid":
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=config.train.label_smoothing)
    elif plan.multi_label:
        loss = multilabel.NormalizedSoftmaxCrossEntropy(label_smoothing=config.train.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.train.label_smoothing
        )
    return loss, metrics


def compile_model(config, plan, model):
    # Defined on epochs: the stages' steps per epoch and learning-rate scales follow their batches.
    segments = schedules.step_segments(schedules.stage_epochs(config.train.epochs, len(plan.stages)),
                                       [plan.stage_steps(s) for s in plan.stages],
                                       [s.learning_rate_scale for s in plan.stages])
    schedule = schedules.LearningRateSchedule(
        segments=segments,
        peak=plan.peak_lr,
        warmup_epochs=config.train.warmup_epochs,
        schedule=config.train.lr_schedule,
        decay_rate=config.train.lr_decay_rate,
        decay_epochs=config.train.lr_decay_epochs,
        total_epochs=config.train.epochs,
        minimum=config.train.lr_min,
        hold_fraction=config.train.lr_hold_fraction,
    )
    optimizer = optimizers.make_optimizer(config.train, schedule)
    if plan.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    if config.train.optimizer != "adamw":
        optimizers.add_weight_decay(model, config.train.weight_decay, config.train.weight_decay_on)
    loss, metrics = loss_and_metrics(config, plan)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=plan.jit_compile,
                  steps_per_execution=plan.steps_per_execution)
    optimizer.build(model.trainable_variables)
    # The reference's EMA also averages batch norm's moving statistics; evaluation uses those.
    optimizers.average_moving_statistics(model, optimizer)
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:  # Only replicas can be handed an empty batch.
        keras_compat.skip_empty_batches_in_evaluation(model)
    mix_in_the_train_step(model)
    data_batch = (keras.KerasTensor((1, 32, 32, 3), "float32"),
                  keras.KerasTensor((1, plan.num_classes), "float32"))
    if not keras_compat.fix_multi_worker_fit(model, strategy, data_batch):
        # Keras would build them from the first training batch, whose images can be (images, mix).
        keras_compat.build_compiled_from_symbolic_batch(model, data_batch)
    return optimizer


def mix_in_the_train_step(model):
    """The train step takes the input pipeline's batches as they come (uint8 images; with mixup or
    CutMix on, (images, mix) and the labels already mixed; ``datasets.mixing``) and casts and mixes
    the images on the device before the model sees them."""
    train_step = model.train_step

    def mixing_train_step(data):
        x, *rest = data
        return train_step((datasets.mixing.mixed_images(x), *rest))

    model.train_step = mixing_train_step


@contextlib.contextmanager
def restored_dtype_policy():
    """Restores Keras' global dtype policy when the run returns (a run sets its own)."""
    previous = keras.config.dtype_policy()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def setup_precision_and_seed(config, plan):
    keras.mixed_precision.set_dtype_policy(plan.mixed_precision)
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
