"""End to end on a tiny model and generated data: train -> eval -> resume, in a temp folder."""

import os

import numpy as np
import pytest
import yaml

from efficientnetv2 import training
from hparams.config import ConfigError
from tests.training_helpers import tiny_config


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
    assert 0.0 <= results["top1"] <= 1.0


def test_run_folder_contents(tmp_path):
    config = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1, "train.keep_checkpoints": 1})
    model_dir = tmp_path / "run"
    result = training.train(config, str(model_dir), verbose=0, evaluate_each_epoch=True)
    saved = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["blocks"] == config.model.blocks
    checkpoints = sorted(p.name for p in (model_dir / "checkpoints").iterdir())
    # Named by global step (2 epochs x 3 steps); keep_checkpoints=1 removed the first epoch's.
    assert [c for c in checkpoints if c.endswith(".index")] == ["ckpt-6.index"]
    assert any(p.name.endswith(".index") for p in (model_dir / "best").iterdir())
    assert any((model_dir / "logs").rglob("events.out.tfevents*"))
    logs = result["logs"]
    for key in ("loss", "top1", "learning_rate", "images_per_sec", "image_size", "dropout_rate",
                "eval_top1"):
        assert key in logs, key
    assert logs["images_per_sec"] > 0


def test_resume_with_another_config_is_refused(tmp_path):
    training.train(tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1}), str(tmp_path), verbose=0,
                   max_epochs=1)
    changed = tiny_config(**{"train.epochs": 2, "progressive.num_stages": 1, "train.lr_base": 0.5})
    with pytest.raises(ConfigError, match=r"train.lr_base: 0.256 -> 0.5"):
        training.train(changed, str(tmp_path), verbose=0)
    result = training.train(changed, str(tmp_path), verbose=0, allow_config_change=True)
    assert result["epoch"] == 2


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"train.epochs": 3, "progressive.num_stages": 1, "train.lr_base": 1e12,
                            "train.warmup_epochs": 0.0, "train.lr_base_batch_size": 8})
    with pytest.raises(training.NonFiniteLoss, match="loss became") as info:
        training.train(config, str(tmp_path), verbose=0)
    assert "last good checkpoint" in str(info.value)


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
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
