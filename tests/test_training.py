"""End to end on a tiny model and generated data: train -> eval -> resume, in a temp folder."""

import json
import os

import numpy as np
import pytest
import yaml

from efficientnetv2.train import compilation, run_folder, schedules, training
from hparams.config import ConfigError
from tests.training_helpers import scalars, summaries, tiny_config


def _weights(result):
    return [np.array(w) for w in result["model"].weights]


def test_train_eval_resume_gives_the_same_weights(tmp_path):
    config = tiny_config()
    straight = training.train(config, str(tmp_path / "straight"), verbose=0)
    assert straight["epoch"] == 4

    first = training.train(config, str(tmp_path / "resumed"), verbose=0, max_epochs=2)
    assert first["epoch"] == 2
    second = training.train(config, str(tmp_path / "resumed"), verbose=0)
    assert second["epoch"] == 4
    for a, b in zip(_weights(straight), _weights(second)):
        np.testing.assert_array_equal(a, b)
    optimizer_a = [np.array(v) for v in straight["optimizer"].variables]
    optimizer_b = [np.array(v) for v in second["optimizer"].variables]
    for a, b in zip(optimizer_a, optimizer_b):
        np.testing.assert_array_equal(a, b)

    results = training.evaluate(config, str(tmp_path / "resumed"))
    assert results["epoch"] == 4 and results["image_size"] == 48 and results["ema"] == 1.0
    # Evaluating the same checkpoint twice gives the same top-1 (the whole pipeline is deterministic).
    assert training.evaluate(config, str(tmp_path / "straight"))["top1"] == results["top1"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """One 2-epoch run evaluated after each epoch, keeping 1 checkpoint: (config, model_dir, result)."""
    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1, "train.keep_checkpoints": 1})
    model_dir = tmp_path_factory.mktemp("evaluated") / "run"
    return config, model_dir, training.train(config, str(model_dir), verbose=0, evaluate_each_epoch=True)


def test_run_folder_contents(evaluated_run):
    config, model_dir, result = evaluated_run
    saved = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["blocks"] == config.model.blocks
    checkpoints = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
    # Named by global step (2 epochs x 3 steps); keep_checkpoints=1 removed the first epoch's.
    assert [c for c in checkpoints if c.endswith(".index")] == ["ckpt-6.index"]
    assert any(p.name.endswith(".index") for p in (model_dir / "best").iterdir())
    # One events file for the run's training scalars, not one per epoch (keras_compat.RunTensorBoard).
    assert len(list((model_dir / "logs" / "train").glob("events.out.tfevents*"))) == 1
    logs = result["logs"]
    for key in ("loss", "top1", "learning_rate", "images_per_sec", "image_size", "dropout_rate",
                "eval_top1"):
        assert key in logs, key
    assert logs["images_per_sec"] > 0
    assert logs["eval_examples"] == 2 * 16  # eval.steps x eval.batch_size


def test_train_and_eval_writes_validation_scalars_beside_the_training_ones(evaluated_run):
    _, model_dir, result = evaluated_run
    train, validation = scalars(model_dir / "logs" / "train"), scalars(model_dir / "logs" / "validation")
    # The same tag at the same epoch steps as Keras' training scalars: one chart with both curves.
    assert set(train["epoch_top1"]) == set(validation["epoch_top1"]) == {0, 1}
    assert set(validation["epoch_loss"]) == {0, 1}
    assert validation["epoch_top1"][1] == pytest.approx(result["logs"]["eval_top1"])


def test_resume_with_another_config_is_refused(tmp_path):
    training.train(tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1}), str(tmp_path), verbose=0,
                   max_epochs=1)
    changed = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1, "train.lr_base": 0.5})
    with pytest.raises(ConfigError, match=r"train.lr_base: 0.256 -> 0.5"):
        training.train(changed, str(tmp_path), verbose=0)
    result = training.train(changed, str(tmp_path), verbose=0, allow_config_change=True)
    assert result["epoch"] == 2


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    good = tiny_config(**{"train.epochs": 3, "progressive.num_stages": 1})
    training.train(good, str(tmp_path), verbose=0, max_epochs=1)
    folder = str(tmp_path / "checkpoints")
    last_good = tf.train.latest_checkpoint(folder)
    before = {n: tf.train.load_variable(last_good, n) for n, _ in tf.train.list_variables(last_good)}

    exploding = tiny_config(**{"train.epochs": 3, "progressive.num_stages": 1, "train.lr_base": 1e30,
                               "train.warmup_epochs": 0.0, "train.lr_base_batch_size": 8})
    with pytest.raises(training.NonFiniteLoss, match="loss became") as info:
        training.train(exploding, str(tmp_path), verbose=0, allow_config_change=True)
    assert f"The last good checkpoint is {last_good}" in str(info.value)
    assert tf.train.latest_checkpoint(folder) == last_good  # Nothing non-finite was saved over it.
    after = {n: tf.train.load_variable(last_good, n) for n, _ in tf.train.list_variables(last_good)}
    assert before.keys() == after.keys() and all(np.array_equal(before[n], after[n]) for n in before)
    assert all(np.isfinite(v).all() for v in after.values() if np.issubdtype(np.asarray(v).dtype, np.floating))


def test_eval_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.evaluate(tiny_config(), str(tmp_path))


def test_bad_config_refused_before_any_work(tmp_path):
    config = tiny_config(**{"eval.image_size": 40})
    with pytest.raises(ConfigError, match=r"'eval.image_size' = 40: must be >= the last training image size \(48\)"):
        training.train(config, str(tmp_path / "run"), verbose=0)
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training(tmp_path, precision):
    import keras

    config = tiny_config(**{"train.epochs": 1, "progressive.num_stages": 1, "train.mixed_precision": precision})
    try:
        result = training.train(config, str(tmp_path), verbose=0)
        model = result["model"]
        assert model.get_layer("block3a").compute_dtype == precision.split("_")[1]
        assert all(w.dtype == "float32" for w in model.weights if w.dtype != "int64")
        assert np.isfinite(result["logs"]["loss"])
        if precision == "mixed_float16":
            assert isinstance(result["optimizer"], keras.optimizers.LossScaleOptimizer)
        assert keras.config.dtype_policy().name == "float32"  # The run restored the global policy.
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_a_failed_first_attempt_does_not_block_the_corrected_command(tmp_path):
    run = str(tmp_path / "run")
    missing = str(tmp_path / "no-such-weights.h5")
    with pytest.raises(FileNotFoundError, match="no-such-weights"):
        training.train(tiny_config(**{"train.init_checkpoint": missing}), run, verbose=0)
    assert not os.path.exists(os.path.join(run, "config.yaml"))  # Only a run that started has one.
    # A config.yaml without any checkpoint (e.g. from an older version's failed attempt) is no run.
    with open(os.path.join(run, "config.yaml"), "w") as f:
        yaml.safe_dump({"train": {"batch_size": 128}}, f)
    result = training.train(tiny_config(), run, verbose=0, max_epochs=1)
    assert result["epoch"] == 1
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["train"]["batch_size"] == 8


def test_a_model_dir_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's notes\n")
    with pytest.raises(NotADirectoryError, match=r"--model_dir .*notes.txt is a file, not a folder"):
        training.train(tiny_config(), str(a_file), verbose=0)
    assert a_file.read_text() == "the user's notes\n"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_folder.os, "makedirs", refuse)  # Tests run as root: chmod would not refuse.
    with pytest.raises(PermissionError, match=r"--model_dir .*readonly cannot be written \(Permission denied\)"):
        training.train(tiny_config(), str(tmp_path / "readonly"), verbose=0)


def test_a_second_run_into_a_locked_folder_is_refused_before_any_work(tmp_path):
    from efficientnetv2.train.run_lock import RunLock, RunLocked

    with RunLock(str(tmp_path)):
        with pytest.raises(RunLocked, match="in use by another run"):
            training.train(tiny_config(), str(tmp_path), verbose=0)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()


def test_fewer_epochs_than_stages_trains_fewer_stages_with_a_warning(caplog):
    import datasets
    import logging

    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 4})
    with caplog.at_level(logging.WARNING):
        plan = training.make_plan(config, datasets.get_source("synthetic"))
    assert [s.image_size for s in plan.stages] == [32, 48]
    assert schedules.stage_epochs(config.train.epochs, len(plan.stages)) == [(0, 1), (1, 2)]
    assert "training in 2 stages" in caplog.text


def test_shrinking_progressive_image_sizes_are_refused():
    import datasets

    config = tiny_config(**{"progressive.image_size_end": None, "progressive.image_size_start": 320})
    with pytest.raises(ConfigError, match=r"progressive image sizes 320 -> 300 shrink"):
        training.make_plan(config, datasets.get_source("synthetic"))


def test_a_corrupt_shard_in_training_is_skipped_counted_and_not_fatal(tmp_path):
    import datasets
    from tests.datasets_helpers import make_imagenet_dir

    root = make_imagenet_dir(str(tmp_path / "data"), train=24, validation=4, num_shards=2)
    datasets.get_source("imagenet", root)  # Writes nothing; counts are taken before the damage.
    shard = tmp_path / "data" / "train-00001-of-00002"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # Truncated mid-record.
    config = tiny_config(**{"data.dataset": "imagenet", "data.data_dir": root, "train.epochs": 1,
                            "progressive.num_stages": 1, "train.steps_per_epoch": 3})
    result = training.train(config, str(tmp_path / "run"), verbose=0)
    assert result["epoch"] == 1  # The short epoch repeats from its start; the run goes on.
    assert result["logs"]["skipped_shards"] >= 1


def _images(folder):
    """{step: (tag, number of images, description)} of the image summaries in ``folder``'s event files."""
    import tensorflow as tf

    # An image summary is [width, height, png, png, ...].
    return {step: (value.tag, tf.make_ndarray(value.tensor).shape[0] - 2, value.metadata.summary_description)
            for step, value in summaries(folder, "images")}


def test_each_stage_start_writes_augmented_images_and_taking_them_changes_nothing(tmp_path):
    config = tiny_config(**{"train.epochs": 2, "progressive.randaug_end": 9, "train.log_stage_images": 4})
    shown = training.train(config, str(tmp_path / "shown"), verbose=0)
    images = _images(tmp_path / "shown" / "logs" / "stage_images")
    # Two stages of one 3-step epoch each: at global steps 0 and 3.
    assert sorted(images) == [0, 3]
    assert images[0][:2] == ("augmented_images", 4) and images[3][:2] == ("augmented_images", 4)
    assert "32 px, RandAugment magnitude 1.0" in images[0][2] and "48 px, RandAugment magnitude 9.0" in images[3][2]

    off = training.train(tiny_config(**{"train.epochs": 2, "progressive.randaug_end": 9, "train.log_stage_images": 0}),
                         str(tmp_path / "off"), verbose=0)
    assert not (tmp_path / "off" / "logs" / "stage_images").exists()
    for a, b in zip(_weights(shown), _weights(off)):
        np.testing.assert_array_equal(a, b)


def test_plan_with_per_stage_batch():
    import datasets

    source = datasets.get_source("synthetic")
    config = tiny_config(**{"progressive.batch_scaling": "pixels", "train.batch_size": 24, "train.steps_per_epoch": 10,
                            "progressive.image_size_end": 64, "eval.image_size": 64, "eval.batch_size": 24})
    plan = training.make_plan(config, source, num_replicas=3)
    # 32 px: 24 * (64/32)^2 = 96 (a multiple of lcm(8, 3) = 24); 64 px: 24. Steps keep an epoch's 240 images.
    assert [s.batch_size for s in plan.stages] == [96, 24]
    assert [plan.stage_steps(s) for s in plan.stages] == [2, 10]
    assert [s.learning_rate_scale for s in plan.stages] == [4.0, 1.0]
    capped = training.make_plan(tiny_config(**{"progressive.batch_scaling": "pixels", "progressive.max_batch_size": 12,
                                               "train.optimizer": "adamw"}), source)
    assert [s.batch_size for s in capped.stages] == [8, 8]  # 18 capped at 12, rounded down to 8
    sqrt = training.make_plan(tiny_config(**{"progressive.batch_scaling": "pixels", "train.optimizer": "adamw"}), source)
    assert [s.batch_size for s in sqrt.stages] == [16, 8]
    assert [s.learning_rate_scale for s in sqrt.stages] == pytest.approx([2 ** 0.5, 1.0])  # AdamW: square root
    for rule, scale in (("sqrt", 2 ** 0.5), ("linear", 2.0)):  # the optimizer's rule overridden
        chosen = training.make_plan(tiny_config(**{"progressive.batch_scaling": "pixels",
                                                   "progressive.lr_batch_rule": rule}), source)
        assert [s.learning_rate_scale for s in chosen.stages] == pytest.approx([scale, 1.0])
    off = training.make_plan(tiny_config(), source)
    assert [(s.batch_size, off.stage_steps(s), s.learning_rate_scale) for s in off.stages] == [(8, 3, 1.0)] * 2


def test_per_stage_batch_settings_are_checked():
    import datasets

    source = datasets.get_source("synthetic")
    with pytest.raises(ConfigError, match=r"'progressive.max_batch_size' = 4: must be >= train.batch_size \(8\)"):
        training.make_plan(tiny_config(**{"progressive.max_batch_size": 4}), source)
    with pytest.raises(ConfigError, match=r"'progressive.batch_scaling' got 'area'; expected one of \['none', 'pixels'\]"):
        tiny_config(**{"progressive.batch_scaling": "area"})
    with pytest.raises(ConfigError, match=r"'progressive.lr_batch_rule' got 'cube'; expected one of"):
        tiny_config(**{"progressive.lr_batch_rule": "cube"})
    with pytest.raises(ConfigError, match=r"'train.log_stage_images' = -1: must be >= 0"):
        training.make_plan(tiny_config(**{"train.log_stage_images": -1}), source)


def test_resumed_train_and_eval_keeps_a_better_best_checkpoint(tmp_path, caplog):
    # The best top-1 is recorded beside best/ and read back on resume: an evaluation worse than the
    # recorded best (here: a record no evaluation can beat) does not replace the kept checkpoint.
    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1})
    model_dir = tmp_path / "run"
    training.train(config, str(model_dir), verbose=0, evaluate_each_epoch=True, max_epochs=1)
    best = model_dir / "best"
    record = json.loads((best / "best.json").read_text())
    assert record["step"] == 3 and 0.0 <= record["top1"] <= 1.0
    assert (best / "ckpt-3.index").exists()
    (best / "best.json").write_text(json.dumps({"top1": 1.5, "step": 3}))
    with caplog.at_level("INFO", logger="absl"):
        training.train(config, str(model_dir), verbose=0, evaluate_each_epoch=True)
    assert "Best checkpoint so far: top-1 1.5000 at step 3" in caplog.text
    assert sorted(p.name for p in best.glob("*.index")) == ["ckpt-3.index"]
    assert json.loads((best / "best.json").read_text()) == {"top1": 1.5, "step": 3}


def test_the_train_step_casts_and_mixes_the_batches_the_pipeline_hands_over():
    """The input pipeline hands over uint8 images, and with mixup/CutMix the batch's mixing plan
    (labels already mixed); the model must train on the float images mixed by that plan."""
    import keras
    import tensorflow as tf

    from datasets import mixing

    seen = []

    class Recording(keras.Model):
        def train_step(self, data):
            seen.append(data)
            return {}

    model = Recording()
    compilation.mix_in_the_train_step(model)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, [4, 6, 5, 3]), tf.uint8)
    labels = tf.one_hot([0, 1, 2, 3], 4)
    mix, mixed_labels = mixing.plan(labels, tf.constant([1, 2], tf.int64), (6, 5), cutmix_alpha=1.0)
    model.train_step(((images, mix), mixed_labels))
    model.train_step((images, labels))
    (mixed, y), (plain, y2) = seen
    assert mixed.dtype == plain.dtype == tf.float32 and y is mixed_labels and y2 is labels
    np.testing.assert_array_equal(mixed, mixing.apply(tf.cast(images, tf.float32), mix))
    assert not np.array_equal(mixed, plain)  # CutMix pasted something in.
    np.testing.assert_array_equal(plain, images.numpy().astype(np.float32))


def test_make_plan_checks_every_key_once_then_the_derived_sizes(monkeypatch):
    import datasets  # noqa: PLC0415
    from hparams import config as config_lib  # noqa: PLC0415

    config, source = tiny_config(), datasets.get_source("synthetic", None)
    calls = []
    check = config_lib._check
    monkeypatch.setattr(config_lib, "_check", lambda *args: calls.append(args[0]) or check(*args))
    training.make_plan(config, source)
    assert sorted(calls) == sorted(set(calls)) and "train.epochs" in calls
