"""A tiny training config shared by the training, progressive and fault tests, and readers of the
TensorBoard event files the runs write."""

from hparams import config as config_lib

# The last stage's second block has a residual with stochastic depth (rate 0.2 * 3 / 4).
TINY_BLOCKS = "r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r2_k3_s2_e2_i16_o16_se0.25"


def without_graph_optimizations():
    """Turns TensorFlow's graph optimizer (grappler) off in this process. The tests trace hundreds of
    small graphs and run each a few times, so optimizing them costs more than it saves (a tiny 4-epoch
    run 9.8 -> 8.0 s); the optimizations rewrite graphs without changing what they compute."""
    import tensorflow as tf  # noqa: PLC0415 only where wanted: this module is imported without TF too

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def tiny_settings(**overrides):
    """The overrides of ``tiny_config`` as a dict of strings (for ``--hparams`` too)."""
    settings = {
        "model.blocks": TINY_BLOCKS,
        "model.head_filters": 32,
        "model.bn_momentum": 0.9,
        "model.drop_path_rate": 0.2,
        "train.epochs": 4,
        "train.batch_size": 8,
        "train.steps_per_epoch": 3,
        "train.warmup_epochs": 1.0,
        "train.ema_decay": 0.9,
        "train.seed": 1,
        "progressive.num_stages": 2,
        "progressive.image_size_start": 32,
        "progressive.image_size_end": 48,
        "progressive.randaug_start": 1,
        "progressive.randaug_end": 5,
        "progressive.dropout_start": 0.0,
        "progressive.dropout_end": 0.3,
        "eval.image_size": 48,
        "eval.batch_size": 16,
        "eval.steps": 2,
        # No augmented images at each stage start: each costs a pipeline build (a RandAugment trace) per
        # stage. tests/test_training.py turns them on and checks that taking them changes no weight.
        "train.log_stage_images": 0,
    }
    settings.update(overrides)
    return {k: str(v) for k, v in settings.items()}


def tiny_hparams(**overrides):
    """``tiny_settings`` as a ``--hparams`` string for main.py."""
    return ",".join(f"{k}='{v}'" for k, v in tiny_settings(**overrides).items())


def tiny_config(**overrides):
    """Synthetic data, a 3-block model, 32-48 px, a few steps per epoch: seconds per epoch on a CPU."""
    config = config_lib.load_config(dataset="synthetic", model="s")
    return config_lib.apply_overrides(config, tiny_settings(**overrides))


def summaries(folder, plugin):
    """``(step, value)`` of each summary of ``plugin`` ("scalars", "images") in ``folder``'s event files."""
    import tensorflow as tf  # noqa: PLC0415 this module is imported without TF too
    from tensorflow.core.util import event_pb2  # noqa: PLC0415

    for path in sorted(folder.glob("events.out.tfevents*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == plugin:  # not the model graph's text
                    yield event.step, value


def scalars(folder):
    """{tag: {step: value}} of the TensorBoard event files in ``folder``."""
    import tensorflow as tf  # noqa: PLC0415

    found = {}
    for step, value in summaries(folder, "scalars"):
        found.setdefault(value.tag, {})[step] = float(tf.make_ndarray(value.tensor))
    return found
