"""hparams/small_data.yaml learns on real photos: a short run of the recipe on imagenette (slow; skipped
when the folder is absent). The bound is far above chance (10%) and below what the short run
reaches, so a recipe that stops learning (a broken initialization, optimizer or schedule) fails."""

import os

import pytest

from efficientnetv2.train import training
from hparams import config as config_lib
from tests.datasets_helpers import IMAGENETTE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(IMAGENETTE), reason=f"real images not present at {IMAGENETTE}")]


def test_a_short_run_of_the_recipe_learns_imagenette(tmp_path):
    config = config_lib.load_config(data_dir=IMAGENETTE, model="b0",
                                    hparams_file=os.path.join(config_lib.HPARAMS_DIR, "small_data.yaml"))
    config_lib.apply_overrides(config, {
        "train.epochs": "2", "train.steps_per_epoch": "60", "progressive.image_size_start": "64",
        "progressive.image_size_end": "64", "eval.image_size": "64", "eval.steps": "20",
    }, source="test")
    training.train(config, str(tmp_path), verbose=0)
    top1 = training.evaluate(config, str(tmp_path))["top1"]
    assert top1 > 0.35, f"a short run of hparams/small_data.yaml reached {top1:.3f} top-1 (chance: 0.1)"
