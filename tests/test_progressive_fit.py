"""progressive_fit.fit: any compiled Keras model trained through the stages of a schedule; the trainer
on the same epoch loop (train_epochs)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import datasets
from efficientnetv2.train import loop, progressive_fit, training
from tests import datasets_helpers
from tests.training_helpers import tiny_config

CLASSES = 3
SCHEDULE = progressive_fit.make_schedule(2, image_size=(32, 48), randaug_magnitude=(0.0, 5.0),
                                         mixup_alpha=(0.0, 0.2), dropout_rate=(0.1, 0.3))


def random_data(image_size, randaug_magnitude, mixup_alpha, epoch, size=None, batches=2, batch=4):
    """A user's data function: random images at the size asked for (or ``size``), one-hot labels."""
    size = size or image_size
    rng = np.random.default_rng(epoch)
    images = rng.uniform(0, 255, (batches * batch, size, size, 3)).astype("float32")
    labels = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, batches * batch)]
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)


def count_traces(model):
    """The image shapes of each trace of the model's train step (its Python runs only when traced)."""
    traced = []
    train_step = model.train_step

    def counted(data):
        traced.append(tuple(tf.nest.flatten(data)[0].shape[1:3]))
        return train_step(data)

    model.train_step = counted
    return traced


class Recorder(keras.callbacks.Callback):
    """The dropout rate each epoch starts with, and how often the run began and ended."""

    def __init__(self, layer_name):
        super().__init__()
        self.layer_name, self.rates, self.begins, self.ends = layer_name, [], 0, 0

    def on_train_begin(self, logs=None):
        self.begins += 1

    def on_train_end(self, logs=None):
        self.ends += 1

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(self.model.get_layer(self.layer_name).rate)


def convnet(dropout_name="head_dropout", classes=CLASSES):
    model = keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Dropout(0.5, name="features_dropout"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.2, name=dropout_name),
        keras.layers.Dense(classes, activation="softmax"),
    ])
    model.compile("adam", "categorical_crossentropy")
    return model


def test_keras_applications_b0_with_a_data_function():
    model = keras.applications.EfficientNetV2B0(weights=None, input_tensor=keras.Input((None, None, 3)),
                                                classes=CLASSES)
    model.compile("adam", "categorical_crossentropy")
    traced, recorder = count_traces(model), Recorder("top_dropout")
    history = progressive_fit.fit(model, random_data, epochs=3, schedule=SCHEDULE,
                                  validation_data=random_data(48, 0, 0, 99, batches=1),
                                  callbacks=[recorder], verbose=0)
    # Stages of 1 and 2 epochs: one trace per stage, at the stage's size.
    assert traced == [(32, 32), (48, 48)]
    assert recorder.rates == pytest.approx([0.1, 0.3, 0.3])
    assert (recorder.begins, recorder.ends) == (1, 1)
    assert history.epoch == [0, 1, 2]
    assert history.history["image_size"] == [32.0, 48.0, 48.0]
    assert history.history["mixup_alpha"] == pytest.approx([0.0, 0.2, 0.2])
    assert len(history.history["val_loss"]) == 3


@pytest.mark.parametrize("data", ["synthetic", "folder"])
def test_sequential_convnet_with_the_projects_pipeline(data, tmp_path):
    if data == "folder":
        datasets_helpers.make_folder(str(tmp_path), {name: 10 for name in ("a", "b", "c")})
        data = str(tmp_path)
    else:
        data = datasets.get_source("synthetic", None, synthetic_train_examples=12, synthetic_eval_examples=4)
    model = convnet(classes=CLASSES if isinstance(data, str) else 10)  # the synthetic set has ten classes
    traced, recorder = count_traces(model), Recorder("head_dropout")
    history = progressive_fit.fit(model, data, epochs=2, schedule=SCHEDULE, batch_size=4, verbose=0,
                                  callbacks=[recorder])
    assert traced == [(32, 32), (48, 48)]
    # The model's last Dropout follows the schedule; the one before it keeps its rate.
    assert recorder.rates == pytest.approx([0.1, 0.3])
    assert model.get_layer("features_dropout").rate == 0.5
    assert history.history["stage"] == [1.0, 2.0]


def test_early_stopping_ends_the_run():
    model = convnet()
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    history = progressive_fit.fit(model, random_data, epochs=4, schedule=SCHEDULE, callbacks=[stop], verbose=0)
    # The first epoch sets the best loss; the second improves by less than min_delta and stops the run.
    assert history.epoch == [0, 1]


def test_refuses_a_model_of_fixed_input_size():
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(CLASSES)])
    model.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"fixed size \(32, 32\).*\[32, 48\].*input_shape=\(None, None, 3\)"):
        progressive_fit.fit(model, random_data, epochs=2, schedule=SCHEDULE, verbose=0)


def test_refuses_dropout_layers_that_do_not_exist():
    with pytest.raises(ValueError, match=r"\['top_dropout'\] are not Dropout layers.*"
                                         r"\['features_dropout', 'head_dropout'\]"):
        progressive_fit.fit(convnet(), random_data, epochs=2, schedule=SCHEDULE, dropout_layers=["top_dropout"],
                            verbose=0)


@pytest.mark.parametrize("static", [True, False])
def test_refuses_data_of_the_wrong_image_size(static):
    def data(image_size, randaug_magnitude, mixup_alpha, epoch):
        dataset = random_data(image_size, randaug_magnitude, mixup_alpha, epoch, size=40)
        if static:
            return dataset
        # A size known only from the first batch (element_spec says None), as from a generator.
        signature = (tf.TensorSpec((None, None, None, 3)), tf.TensorSpec((None, CLASSES)))
        return tf.data.Dataset.from_generator(dataset.as_numpy_iterator, output_signature=signature)

    with pytest.raises(ValueError, match=r"stage 1/2 trains at 32 px, .* first batch has images of 40x40"):
        progressive_fit.fit(convnet(), data, epochs=2, schedule=SCHEDULE, verbose=0)


def test_paper_schedule_is_the_variants_table():
    stages = progressive_fit.paper_schedule("b0", num_stages=4)
    # B0's row of the paper's table: 128 -> 192 px (the middle stages at 149.3 and 170.7, to multiples
    # of 8), RandAugment 5 -> 10, dropout 0.1 -> 0.2.
    assert [s.image_size for s in stages] == [128, 152, 168, 192]
    assert (stages[0].randaug_magnitude, stages[-1].randaug_magnitude) == (5.0, 10.0)
    assert (stages[0].dropout_rate, stages[-1].dropout_rate) == pytest.approx((0.1, 0.2))


def test_refuses_a_dropout_layer_built_with_rate_zero():
    zero = keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dropout(0.0, name="head_dropout"), keras.layers.Dense(CLASSES)])
    zero.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"'head_dropout' was built with rate 0.*rate > 0"):
        progressive_fit.fit(zero, random_data, epochs=2, schedule=SCHEDULE, verbose=0)


def test_the_trainer_trains_every_epoch_through_train_epochs(tmp_path, monkeypatch):
    calls, ended, fits = [], [], []
    inside = [False]
    train_epochs, model_fit = progressive_fit.train_epochs, keras.Model.fit

    def spy(model, stages, first_epoch, end_epoch, hooks, **kwargs):
        calls.append((first_epoch, end_epoch, type(hooks)))
        end_epoch_hook = hooks.end_epoch

        def end_epoch_recorded(epoch, params, logs):
            ended.append((epoch, params.image_size))
            end_epoch_hook(epoch, params, logs)

        hooks.end_epoch = end_epoch_recorded
        inside[0] = True
        try:
            return train_epochs(model, stages, first_epoch, end_epoch, hooks, **kwargs)
        finally:
            inside[0] = False

    def fit(self, *args, **kwargs):
        fits.append(inside[0])
        return model_fit(self, *args, **kwargs)

    monkeypatch.setattr(progressive_fit, "train_epochs", spy)
    monkeypatch.setattr(keras.Model, "fit", fit)
    result = training.train(tiny_config(**{"train.epochs": 2}), str(tmp_path), verbose=0)
    # One call for the run; each epoch's fit inside it, each epoch ended by the trainer's hooks at its
    # stage's size (stages of one epoch: 32 then 48 px).
    assert calls == [(0, 2, loop.RunHooks)]
    assert fits == [True, True]
    assert ended == [(0, 32), (1, 48)]
    assert result["epoch"] == 2 and result["logs"]["image_size"] == 48.0
