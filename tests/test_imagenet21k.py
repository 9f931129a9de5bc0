"""ImageNet-21k as the paper trains it: normalized-softmax loss, cheap metrics, the hold-out split,
the named configurations, and pretrain -> fine-tune with a new head, end to end on tiny generated
multi-label records."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import get_source
from datasets.holdout import is_held_out
from efficientnetv2.io.checkpointing import find_checkpoint, read_weights
from efficientnetv2.train import multilabel, training
from hparams import config as config_lib
from tests.datasets_helpers import jpeg_bytes, make_imagenet_dir, smooth_image, write_imagenet21k_shards
from tests.training_helpers import tiny_settings

CLASSES_21K = 7


def test_loss_is_softmax_cross_entropy_on_labels_summing_to_one():
    logits = np.array([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 3.0]], "float32")
    targets = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], "float32")
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = [-(0.5 * log_p[0, 0] + 0.5 * log_p[0, 2]), -log_p[1, 3]]
    got = multilabel.NormalizedSoftmaxCrossEntropy(reduction=None)(targets, logits)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-6)
    smoothed = multilabel.NormalizedSoftmaxCrossEntropy(label_smoothing=0.2, reduction=None)(targets, logits)
    q = np.array([[0.5, 0, 0.5, 0], [0, 0, 0, 1]]) * 0.8 + 0.2 / 4  # Smoothing after normalizing.
    np.testing.assert_allclose(np.array(smoothed), -(q * log_p).sum(-1), rtol=1e-5)


def test_top1_in_labels_counts_any_label():
    metric = multilabel.TopOneInLabels()
    metric.update_state(np.array([[0, 1, 1], [1, 0, 0]], "float32"), np.array([[0, 1, 5], [0, 2, 1]], "float32"))
    assert float(metric.result()) == 0.5  # The first image's top class 2 is a label; the second's is not.


def test_holdout_is_deterministic_disjoint_and_about_the_asked_size():
    ids = tf.constant([f"/somewhere/train-{s:05d}-of-00008:{i}" for s in range(8) for i in range(2500)])
    held = is_held_out(ids, 0.1).numpy()
    moved = tf.strings.regex_replace(ids, "/somewhere/", "/elsewhere/deeper/")
    np.testing.assert_array_equal(is_held_out(moved, 0.1).numpy(), held)  # By file name, not folder.
    assert abs(held.sum() - 2000) < 5 * np.sqrt(20000 * 0.1 * 0.9)  # Binomial, 5 standard deviations.
    assert not is_held_out(ids, 0.0).numpy().any() and is_held_out(ids, 1.0).numpy().all()
    with pytest.raises(ValueError, match="fraction"):
        is_held_out(ids, 1.5)


def _write_21k(directory, count=48):
    rng = np.random.default_rng(0)
    labels = [sorted(rng.choice(CLASSES_21K, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(count)]
    images = [jpeg_bytes(smooth_image(i, 40, 40)) for i in range(count)]
    write_imagenet21k_shards(str(directory), "train", images, labels, num_shards=3)
    return str(directory)


def _ids(source, split):
    return sorted(e["id"].numpy().decode().split(" ")[0] for e in source.examples(split))


def test_holdout_split_counts_the_records_once_per_run_folder(tmp_path, monkeypatch):
    # ImageNet-21k has no standard layout with known counts: the first start counts, later ones read
    # the count from the run folder.
    from datasets import tfrecord

    data, run = _write_21k(tmp_path / "21k"), str(tmp_path / "run")
    counted, count_records = [], tfrecord.count_records
    monkeypatch.setattr(tfrecord, "count_records", lambda *args: counted.append(1) or count_records(*args))
    for _ in range(2):  # A first start, then a restart.
        source = get_source("imagenet21k", data, num_classes=CLASSES_21K, count_cache_dir=run, holdout=12)
        assert (source.num_examples("train"), source.num_examples("eval")) == (36, 12)
        assert source.describe().endswith("36 train / 12 eval examples (eval: about 12 training records held out)")
    assert counted == [1]


def test_holdout_split_of_tfrecords_never_trains_on_held_out_records(tmp_path):
    data = _write_21k(tmp_path / "21k")
    source = get_source("imagenet21k", data, num_classes=CLASSES_21K, holdout=12)
    train, held = _ids(source, "train"), _ids(source, "eval")
    assert not set(train) & set(held) and len(train) + len(held) == 48
    assert held and held == _ids(get_source("imagenet21k", data, num_classes=CLASSES_21K, holdout=12), "eval")
    assert source.num_examples("eval") == 12 and source.num_examples("train") == 36
    with pytest.raises(ValueError, match="own eval split"):
        get_source("synthetic", holdout=5)


@pytest.mark.parametrize("name", ["imagenet21k", "imagenet21k_ft1k", "transfer_cifar10", "transfer_cifar100",
                                  "transfer_cars", "transfer_flowers"])
def test_named_configurations_load_and_validate(name):
    config = config_lib.load_config(dataset="synthetic", hparams_file=config_lib.named_config_path(name))
    config_lib.validate(config)


def test_imagenet21k_config_has_the_papers_numbers():
    c = config_lib.load_config(dataset="imagenet21k", data_dir="unused")
    assert (c.train.loss, c.train.epochs, c.train.lr_schedule, c.train.label_smoothing) == ("softmax", 60, "cosine", 0.0)
    assert c.data.holdout_examples == 100_000
    assert c.train.lr_base * 4096 / c.train.lr_base_batch_size == pytest.approx(0.128)  # Reference: 0.008 per 256.
    ft = config_lib.load_config(dataset="imagenet", data_dir="unused",
                                hparams_file=config_lib.named_config_path("imagenet21k_ft1k"))
    assert (ft.train.epochs, ft.train.lr_schedule, ft.train.batch_size) == (15, "cosine", 512)


def _tiny(dataset, data_dir, **overrides):
    settings = tiny_settings(**{"train.epochs": 1, "progressive.num_stages": 1, "train.steps_per_epoch": 1,
                                "eval.steps": 1, **overrides})
    config = config_lib.load_config(dataset=dataset, data_dir=data_dir)
    return config_lib.apply_overrides(config, settings)


def test_pretrain_on_21k_then_fine_tune_with_a_new_head(tmp_path):
    data = _write_21k(tmp_path / "21k")
    (tmp_path / "21k" / "labels.txt").write_text("".join(f"c{i}\n" for i in range(CLASSES_21K)))
    pre = _tiny("imagenet21k", data, **{"data.holdout_examples": 12})
    assert pre.train.loss == "softmax" and pre.data.holdout_examples == 12  # hparams/imagenet21k.yaml
    result = training.train(pre, str(tmp_path / "pre"), verbose=0)
    logs = result["logs"]
    assert "auc" not in logs and {"top1", "top1_any"} <= logs.keys()
    assert isinstance(result["model"].loss, multilabel.NormalizedSoftmaxCrossEntropy)

    target = make_imagenet_dir(str(tmp_path / "1k"), train=16, validation=4, num_classes=3)
    (tmp_path / "1k" / "labels.txt").write_text("a\nb\nc\n")
    ft = _tiny("imagenet", target, **{"train.init_checkpoint": str(tmp_path / "pre"), "train.lr_base": 0.0})
    tuned = training.train(ft, str(tmp_path / "ft"), verbose=0)["model"]
    source = read_weights(find_checkpoint(str(tmp_path / "pre")))
    assert source.num_classes == CLASSES_21K
    backbone = [v for v in tuned.trainable_weights if not v.path.startswith("predictions/")]
    assert backbone
    for v in backbone:  # Learning rate 0: still the 21k run's EMA weights.
        np.testing.assert_array_equal(np.array(v), source.value(v.path), err_msg=v.path)
    assert tuple(tuned.get_layer("predictions").kernel.shape)[-1] == 3  # The new head.
