"""weights_import: our checkpoints, keras.applications files and reference-release checkpoints.

Golden values come from elsewhere than the importer: our checkpoints from ``RunCheckpoint`` and the
optimizer's EMA (``swap_ema_weights``), keras.applications files from keras.applications itself, and
the reference checkpoint's variable names from a table written out here by hand from the reference
model's naming rules (not from ``weights_import.reference_names``).
"""

import dataclasses
import io
import os
import re
import tarfile
import tempfile
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import build_model
from efficientnetv2.io import weights_import
from efficientnetv2.train import optimizers
from efficientnetv2.io.checkpointing import RunCheckpoint
from tests.weights_randomizer import randomize_weights

SIZE = 32
# Fused-MBConv with expand ratio 1, Fused-MBConv with expansion, MBConv with SE: the three block kinds.
TINY_BLOCKS = "r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r1_k3_s2_e2_i16_o16_se0.25"


# Four stride-2 stages: enough reduction levels for a backbone's feature dict (pooling=None).
BACKBONE_BLOCKS = ("r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r1_k3_s2_e2_i16_o16_se0.25,"
                   "r1_k3_s2_e2_i16_o16_se0.25")


def tiny(num_classes=10, blocks=TINY_BLOCKS, head_filters=32, variant="s", **kwargs):
    return build_model(variant, num_classes=num_classes, input_shape=(SIZE, SIZE, 3), blocks=blocks,
                       head_filters=head_filters, **kwargs)


def images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def predict(model, x):
    return np.asarray(model(x, training=False))


def weights_of(model):
    return [np.array(w) for w in model.weights]


# ------------------------------------------------------------------------------------------------
# Our own checkpoints.


def _write_run(model_dir, model, seed=0, variant="s"):
    """A run folder with one RunCheckpoint whose EMA weights differ from the training weights."""
    randomize_weights(model, seed=seed)
    optimizer = optimizers.RMSprop(learning_rate=0.01, use_ema=True, ema_momentum=0.9)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed + 100)
    for average in optimizer._model_variables_moving_average:
        average.assign(np.asarray(average) + rng.normal(0, 0.05, average.shape).astype("float32"))
    checkpoint = RunCheckpoint(os.path.join(model_dir, "checkpoints"), model, optimizer)
    path = checkpoint.save(epoch=1, step_in_epoch=0, global_step=7)
    with open(os.path.join(model_dir, "config.yaml"), "w") as f:
        f.write(f"model:\n  variant: {variant}\n")
    return optimizer, path


def test_run_checkpoint_loads_ema_weights(tmp_path):
    source = tiny()
    optimizer, prefix = _write_run(str(tmp_path), source)
    x = images()
    with optimizers.swap_ema_weights(source, optimizer):
        expected = predict(source, x)
    for path in (str(tmp_path), prefix):  # A run folder, or a checkpoint prefix.
        target = tiny()
        report = weights_import.load_pretrained(target, path, "s")
        assert report["format"] == "run checkpoint" and report["ema"] and not report["skipped"]
        np.testing.assert_array_equal(predict(target, x), expected)
    assert np.abs(expected - predict(source, x)).max() > 1e-3, "EMA and training weights must differ"


def test_run_checkpoint_head_skipped_when_classes_differ(tmp_path):
    source = tiny(num_classes=10)
    _write_run(str(tmp_path), source)
    target = tiny(num_classes=4)
    head_before = np.array(target.get_layer("predictions").kernel)
    report = weights_import.load_pretrained(target, str(tmp_path), "s")
    assert "classifier head not loaded" in report["skipped_reason"]
    assert "(10,) in the source, (4,) in the model" in report["skipped_reason"]
    np.testing.assert_array_equal(np.array(target.get_layer("predictions").kernel), head_before)
    # Batch-norm statistics have no EMA: they are the checkpoint's values.
    np.testing.assert_array_equal(np.array(target.get_layer("top_bn").moving_variance),
                                  np.array(source.get_layer("top_bn").moving_variance))


def test_run_checkpoint_of_another_architecture_refused(tmp_path):
    _write_run(str(tmp_path), tiny())
    wider = tiny(blocks=TINY_BLOCKS.replace("i16_o16_se", "i16_o24_se"))
    before = weights_of(wider)
    with pytest.raises(ValueError, match=r"does not match model .*wrong shape.*block3a"):
        weights_import.load_pretrained(wider, str(tmp_path), "s")
    deeper = tiny(blocks=TINY_BLOCKS + ",r1_k3_s1_e2_i16_o16_se0.25")
    with pytest.raises(ValueError, match=r"backbone weight\(s\) missing: block4a"):
        weights_import.load_pretrained(deeper, str(tmp_path), "s")
    for a, b in zip(before, weights_of(wider)):
        np.testing.assert_array_equal(a, b)  # Nothing assigned on refusal.


def test_run_checkpoint_of_another_variant_refused(tmp_path):
    _write_run(str(tmp_path), tiny(), variant="m")
    with pytest.raises(ValueError, match=r"run of EfficientNetV2-M .*the model 'efficientnetv2-s' is EfficientNetV2-S"):
        weights_import.load_pretrained(tiny(), str(tmp_path), "s")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        weights_import.load_pretrained(tiny(), str(tmp_path), "s")
    with pytest.raises(FileNotFoundError, match="not found"):
        weights_import.load_pretrained(tiny(), str(tmp_path / "ckpt-3"), "s")
    with pytest.raises(FileNotFoundError, match="not found"):
        weights_import.load_pretrained(tiny(), str(tmp_path / "x.h5"), "s")


# ------------------------------------------------------------------------------------------------
# keras.applications files (a real variant: B0 at 64 px with 5 classes).


@pytest.fixture(scope="module")
def b0_application(tmp_path_factory):
    folder = tmp_path_factory.mktemp("b0")
    app = keras.applications.EfficientNetV2B0(weights=None, classes=5, input_shape=(64, 64, 3),
                                              classifier_activation=None)
    randomize_weights(app, seed=3)
    from keras.src.legacy.saving import legacy_h5_format  # The layout of the distributed .h5 files.
    import h5py

    legacy = str(folder / "efficientnetv2-b0.h5")
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    native = str(folder / "efficientnetv2-b0.weights.h5")
    app.save_weights(native)
    model_file = str(folder / "efficientnetv2-b0.keras")
    app.save(model_file)
    x = images(2, 64, seed=5)
    return {"legacy": legacy, "native": native, "keras": model_file, "x": x, "expected": predict(app, x),
            "top_conv": np.array(app.get_layer("top_conv").kernel)}


def test_keras_application_files(b0_application):
    model = build_model("b0", num_classes=5, input_shape=(64, 64, 3))
    expected = b0_application["expected"]
    assert np.abs(expected).max() > 0.1
    # As distributed (.h5), Keras 3's .weights.h5, and a whole model saved as .keras.
    for kind in ("legacy", "native", "keras"):
        randomize_weights(model, seed=11)
        report = weights_import.load_pretrained(model, b0_application[kind], "b0")
        assert report["format"] == "keras.applications" and not report["skipped"]
        assert np.abs(predict(model, b0_application["x"]) - expected).max() <= 1e-4, kind


def test_keras_application_file_head_skipped_when_classes_differ(b0_application):
    model = build_model("b0", num_classes=3, input_shape=(64, 64, 3))
    report = weights_import.load_pretrained(model, b0_application["legacy"], "b0")
    assert "classifier head not loaded" in report["skipped_reason"]
    assert sorted(report["skipped"]) == ["predictions/bias", "predictions/kernel"]


@pytest.mark.slow
def test_keras_application_file_of_another_variant_refused(b0_application):
    b1 = build_model("b1", num_classes=5, input_shape=(64, 64, 3))
    # A legacy file names its layers (block1a_...): the message names the file's variant by its blocks.
    for kind, words in (("legacy", "21 blocks, as EfficientNetV2-B0"), ("native", "another variant")):
        with pytest.raises(ValueError, match=r"is not a keras.applications EfficientNetV2B1 weights file.*" + words):
            weights_import.load_pretrained(b1, b0_application[kind], "b1")


# ------------------------------------------------------------------------------------------------
# Reference-release checkpoints, written here with the reference's variable names.

# Our variable path -> the reference's layer, for TINY_BLOCKS: a Fused-MBConv with expand ratio 1, a
# Fused-MBConv with expansion, an MBConv with SE (reference effnetv2_model.py naming: per block,
# conv2d/conv2d_1 and tpu_batch_normalization/_1/_2 in creation order).
REFERENCE_LAYERS = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/tpu_batch_normalization",
    "block1a/project_conv": "blocks_0/conv2d",
    "block1a/project_bn": "blocks_0/tpu_batch_normalization",
    "block2a/expand_conv": "blocks_1/conv2d",
    "block2a/expand_bn": "blocks_1/tpu_batch_normalization",
    "block2a/project_conv": "blocks_1/conv2d_1",
    "block2a/project_bn": "blocks_1/tpu_batch_normalization_1",
    "block3a/expand_conv": "blocks_2/conv2d",
    "block3a/expand_bn": "blocks_2/tpu_batch_normalization",
    "block3a/dwconv2": "blocks_2/depthwise_conv2d",
    "block3a/bn": "blocks_2/tpu_batch_normalization_1",
    "block3a/se/se_reduce": "blocks_2/se/conv2d",
    "block3a/se/se_expand": "blocks_2/se/conv2d_1",
    "block3a/project_conv": "blocks_2/conv2d_1",
    "block3a/project_bn": "blocks_2/tpu_batch_normalization_2",
    "top_conv": "head/conv2d",
    "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}


def _reference_name(path, prefix, layers):
    layer, leaf = path.rsplit("/", 1)
    if layer.endswith("dwconv2"):
        leaf = "depthwise_kernel"
    return f"{prefix}/{layers[layer]}/{leaf}"


def _write_reference(prefix_path, model, prefix="efficientnetv2-s", ema=True, drop=(), reshape=(),
                     layers=REFERENCE_LAYERS):
    """A name-based checkpoint (as the reference's TF1 saver writes) of ``model``'s weights.

    With ``ema``, every weight also gets a different ``/ExponentialMovingAverage`` copy, and the
    model is left holding those (the values an import must give). Optimizer slots and the global step
    are added as the reference has them.
    """
    rng = np.random.default_rng(9)
    names, tensors = [], []
    for w in model.weights:
        name = _reference_name(w.path, prefix, layers)
        value = np.array(w)
        if name.rsplit("/", 1)[-1] in drop:
            continue
        if name in reshape:
            value = np.zeros(reshape[name], "float32")
        names.append(name)
        tensors.append(value)
        names.append(name + "/RMSProp")
        tensors.append(np.ones_like(value))
        if ema:
            average = value + rng.normal(0, 0.05, value.shape).astype("float32")
            names.append(name + "/ExponentialMovingAverage")
            tensors.append(average)
            w.assign(average)
    names.append("global_step")
    tensors.append(np.array(1234, "int64"))
    tf.raw_ops.SaveV2(prefix=prefix_path, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return prefix_path


@pytest.fixture
def reference(tmp_path):
    source = tiny()
    randomize_weights(source, seed=4)
    prefix = _write_reference(str(tmp_path / "efficientnetv2-s" / "model"), source)
    return source, prefix


def test_reference_checkpoint_gives_identical_outputs(reference):
    source, prefix = reference
    target = tiny()
    report = weights_import.load_pretrained(target, prefix, "efficientnetv2-s")
    assert report["format"] == "reference checkpoint" and report["ema"] and not report["skipped"]
    x = images()
    np.testing.assert_array_equal(predict(target, x), predict(source, x))


def test_reference_folder_and_archive(reference, tmp_path):
    source, prefix = reference
    folder = os.path.dirname(prefix)
    target = tiny()
    weights_import.load_pretrained(target, folder, "s")  # A folder with one checkpoint, no index file.
    np.testing.assert_array_equal(predict(target, images()), predict(source, images()))
    archive = str(tmp_path / "efficientnetv2-s.tgz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="efficientnetv2-s")
    target = tiny()
    weights_import.load_pretrained(target, archive, "s")
    np.testing.assert_array_equal(predict(target, images()), predict(source, images()))


def test_reference_checkpoint_without_ema(tmp_path):
    source = tiny()
    randomize_weights(source, seed=6)
    prefix = _write_reference(str(tmp_path / "model"), source, ema=False)
    target = tiny()
    report = weights_import.load_pretrained(target, prefix, "s")
    assert not report["ema"]
    np.testing.assert_array_equal(predict(target, images()), predict(source, images()))


def test_reference_head_skipped_when_classes_differ(reference):
    source, prefix = reference
    target = tiny(num_classes=7)
    report = weights_import.load_pretrained(target, prefix, "s")
    assert "classifier head not loaded" in report["skipped_reason"]
    np.testing.assert_array_equal(np.array(target.get_layer("top_bn").moving_mean),
                                  np.array(source.get_layer("top_bn").moving_mean))


def test_reference_missing_or_misshapen_backbone_weight_refused(tmp_path):
    source = tiny()
    missing = _write_reference(str(tmp_path / "a" / "model"), source, ema=False,
                               drop=("depthwise_kernel",))
    target = tiny()
    before = weights_of(target)
    with pytest.raises(ValueError, match=r"missing: efficientnetv2-s/blocks_2/depthwise_conv2d/depthwise_kernel"):
        weights_import.load_pretrained(target, missing, "s")
    name = "efficientnetv2-s/blocks_1/conv2d_1/kernel"
    misshapen = _write_reference(str(tmp_path / "b" / "model"), tiny(), ema=False,
                                 reshape={name: (1, 1, 16, 9)})
    with pytest.raises(ValueError, match=rf"wrong shape: {name}: \(1, 1, 16, 9\) in the source, \(1, 1, 16, 16\)"):
        weights_import.load_pretrained(target, misshapen, "s")
    for a, b in zip(before, weights_of(target)):
        np.testing.assert_array_equal(a, b)


def test_reference_checkpoint_of_another_variant_refused(tmp_path):
    prefix = _write_reference(str(tmp_path / "model"), tiny(), prefix="efficientnetv2-m")
    with pytest.raises(ValueError, match=r"holds efficientnetv2-m \(EfficientNetV2-M\); the model 'efficientnetv2-s' is EfficientNetV2-S"):
        weights_import.load_pretrained(tiny(), prefix, "s")


def test_reference_checkpoint_with_extra_blocks_refused(tmp_path):
    deeper = tiny(blocks=TINY_BLOCKS + ",r1_k3_s1_e2_i16_o16_se0.25")
    layers = dict(REFERENCE_LAYERS)
    layers.update({f"block4a/{k.split('/', 1)[1]}": v.replace("blocks_2", "blocks_3")
                   for k, v in REFERENCE_LAYERS.items() if k.startswith("block3a/")})
    prefix = _write_reference(str(tmp_path / "model"), deeper, layers=layers)
    with pytest.raises(ValueError, match=r"weight\(s\) the model does not have: efficientnetv2-s/blocks_3/"):
        weights_import.load_pretrained(tiny(), prefix, "s")


def test_unknown_checkpoint_refused(tmp_path):
    prefix = str(tmp_path / "other")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["w"], shape_and_slices=[""], tensors=[np.zeros(3)])
    with pytest.raises(ValueError, match="cannot tell what"):
        weights_import.load_pretrained(tiny(), prefix, "s")


# ------------------------------------------------------------------------------------------------
# Archive safety.


def _archive(path, add):
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


@pytest.mark.parametrize("member, add", [
    ("../evil", lambda tar: _file(tar, "../evil")),
    ("ok/../../evil", lambda tar: _file(tar, "ok/../../evil")),
    ("/tmp/evil", lambda tar: _file(tar, "/tmp/evil")),
    ("link", lambda tar: _link(tar, "link", "../outside")),
    ("abs-link", lambda tar: _link(tar, "abs-link", "/etc")),
    ("hard", lambda tar: _link(tar, "hard", "../../etc/passwd", tarfile.LNKTYPE)),
    ("fifo", lambda tar: _special(tar, "fifo")),
])
def test_malicious_archive_refused(tmp_path, member, add):
    archive = _archive(str(tmp_path / "bad.tgz"), lambda tar: (_file(tar, "fine.txt"), add(tar)))
    destination = tmp_path / "out" / "inside"
    destination.mkdir(parents=True)
    with pytest.raises(weights_import.UnsafeArchiveError, match=re.escape(repr(member))):
        weights_import.safe_extract(archive, str(destination))
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (destination / "fine.txt").exists(), "nothing may be extracted from a refused archive"
    with pytest.raises(weights_import.UnsafeArchiveError):
        weights_import.load_pretrained(tiny(), archive, "s")


def _special(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    tar.addfile(info)


def test_training_starts_from_init_checkpoint(tmp_path):
    """train.init_checkpoint: a new run starts from another run's EMA weights (head included)."""
    from efficientnetv2.train import training  # noqa: PLC0415
    from efficientnetv2.model import build_model_from_config  # noqa: PLC0415
    from tests.training_helpers import tiny_config  # noqa: PLC0415

    config = tiny_config()
    source = build_model_from_config(config.model, __import__("datasets").get_source("synthetic").num_classes,
                                     dropout_rate=0.0)
    optimizer, _ = _write_run(str(tmp_path / "pretrained"), source)
    config = tiny_config(**{"train.init_checkpoint": str(tmp_path / "pretrained")})
    result = training.train(config, str(tmp_path / "finetune"), verbose=0, max_epochs=0)
    x = images(2, 48)
    with optimizers.swap_ema_weights(source, optimizer):
        np.testing.assert_allclose(predict(result["model"], x), predict(source, x), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Backbones (include_top=False) take a source's backbone and leave its classifier.


def _layers_with_block4():
    """REFERENCE_LAYERS for the model of BACKBONE_BLOCKS (one more MBConv block, blocks_3)."""
    layers = dict(REFERENCE_LAYERS)
    layers.update({f"block4a/{k.split('/', 1)[1]}": v.replace("blocks_2", "blocks_3")
                   for k, v in REFERENCE_LAYERS.items() if k.startswith("block3a/")})
    return layers


def _assert_backbone_equal(target, source_weights):
    assert "predictions" not in [layer.name for layer in target.layers]
    for w in target.weights:
        np.testing.assert_array_equal(np.array(w), source_weights[w.path], err_msg=w.path)


@pytest.mark.parametrize("pooling", [None, "avg"])
def test_backbone_loads_reference_checkpoint(tmp_path, pooling):
    source = tiny(blocks=BACKBONE_BLOCKS)
    randomize_weights(source, seed=12)
    prefix = _write_reference(str(tmp_path / "model"), source, layers=_layers_with_block4())
    target = tiny(blocks=BACKBONE_BLOCKS, include_top=False, pooling=pooling)
    report = weights_import.load_pretrained(target, prefix, "s")
    assert report["source_head_unused"] and not report["skipped"] and report["ema"]
    _assert_backbone_equal(target, {w.path: np.array(w) for w in source.weights})


def test_backbone_loads_keras_application_file(b0_application):
    backbone = build_model("b0", include_top=False, pooling="avg", input_shape=(64, 64, 3))
    report = weights_import.load_pretrained(backbone, b0_application["legacy"], "b0")
    assert report["source_head_unused"]
    np.testing.assert_array_equal(np.array(backbone.get_layer("top_conv").kernel),
                                  b0_application["top_conv"])


def test_backbone_loads_run_checkpoint(tmp_path):
    source = tiny(blocks=BACKBONE_BLOCKS)
    optimizer, _ = _write_run(str(tmp_path), source)
    with optimizers.swap_ema_weights(source, optimizer):
        expected = {w.path: np.array(w) for w in source.weights}
    target = tiny(blocks=BACKBONE_BLOCKS, include_top=False)
    report = weights_import.load_pretrained(target, str(tmp_path), "s")
    assert report["source_head_unused"] and report["ema"]
    _assert_backbone_equal(target, expected)


def test_variant_argument_other_than_the_model_refused(reference):
    _, prefix = reference  # Holds efficientnetv2-s.
    b0 = tiny(variant="b0")
    with pytest.raises(ValueError, match=r"variant 's' \(EfficientNetV2-S\) was given for the model "
                                         r"'efficientnetv2-b0', which is EfficientNetV2-B0; pass variant='b0'"):
        weights_import.load_pretrained(b0, prefix, "s")
    custom = tiny(name="my-net")  # No variant in its name: the message says whose word it is.
    with pytest.raises(ValueError, match=r"holds efficientnetv2-s \(EfficientNetV2-S\); the model 'my-net' "
                                         r"was given as EfficientNetV2-M"):
        weights_import.load_pretrained(custom, prefix, "m")


# ------------------------------------------------------------------------------------------------
# Files given as init_checkpoint that are not what they say, or not a checkpoint.


def test_not_hdf5_h5_refused(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("not weights\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not an HDF5 file"):
        weights_import.load_pretrained(tiny(), str(path), "s")


def test_unsupported_file_refused_with_the_formats(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not a format init_checkpoint reads; "
                                         r"expected .*\.keras model file"):
        weights_import.load_pretrained(tiny(), str(path), "s")


def test_keras_model_file_of_ours(tmp_path):
    source = tiny()
    randomize_weights(source, seed=14)
    path = str(tmp_path / "model.keras")
    source.save(path)
    target = tiny()
    report = weights_import.load_pretrained(target, path, "s")
    assert report["format"] == "keras model file" and not report["skipped"]
    np.testing.assert_array_equal(predict(target, images()), predict(source, images()))
    other = str(tmp_path / "m.keras")
    tiny(variant="m").save(other)
    with pytest.raises(ValueError, match=r"holds model 'efficientnetv2-m' \(EfficientNetV2-M\); the model "
                                         r"'efficientnetv2-s' is EfficientNetV2-S"):
        weights_import.load_pretrained(target, other, "s")


def _good_archive(tmp_path, reference_prefix, suffix=".tgz"):
    folder = os.path.dirname(reference_prefix)
    archive = str(tmp_path / f"efficientnetv2-s{suffix}")
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(os.listdir(folder)):
                z.write(os.path.join(folder, name), f"efficientnetv2-s/{name}")
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname="efficientnetv2-s")
    return archive


def test_zip_archive_loads(reference, tmp_path):
    source, prefix = reference
    target = tiny()
    weights_import.load_pretrained(target, _good_archive(tmp_path, prefix, ".zip"), "s")
    np.testing.assert_array_equal(predict(target, images()), predict(source, images()))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("suffix", [".tgz", ".zip"])
def test_damaged_archive_refused(reference, tmp_path, damage, suffix):
    archive = _good_archive(tmp_path, reference[1], suffix)
    data = open(archive, "rb").read()
    with open(archive, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    with pytest.raises(ValueError, match=rf"archive {re.escape(archive)} is damaged"):
        weights_import.load_pretrained(tiny(), archive, "s")


# ------------------------------------------------------------------------------------------------
# Archives: the checkpoint comes from inside, and the unpacked size is capped.


@pytest.mark.parametrize("inside", [True, False])
def test_archive_index_pointing_outside_ignored(tmp_path, inside):
    """An archive's 'checkpoint' file naming an absolute path: that checkpoint is never loaded."""
    outside = tiny()
    randomize_weights(outside, seed=15)
    outside_prefix = _write_reference(str(tmp_path / "outside" / "model"), outside, ema=False)
    packed = tiny()
    randomize_weights(packed, seed=16)
    folder = tmp_path / "packed"
    if inside:
        _write_reference(str(folder / "model"), packed, ema=False)
    folder.mkdir(exist_ok=True)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{outside_prefix}"\n')
    archive = _archive(str(tmp_path / "a.tgz"), lambda tar: tar.add(str(folder), arcname="efficientnetv2-s"))
    target = tiny()
    if inside:
        weights_import.load_pretrained(target, archive, "s")
        np.testing.assert_array_equal(predict(target, images()), predict(packed, images()))
    else:
        before = weights_of(target)
        with pytest.raises(ValueError, match=rf"archive {re.escape(archive)} holds 0 checkpoints"):
            weights_import.load_pretrained(target, archive, "s")
        for a, b in zip(before, weights_of(target)):
            np.testing.assert_array_equal(a, b)


def _bomb(tmp_path, suffix, size=2 * 2**20):
    archive = str(tmp_path / f"bomb{suffix}")
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("efficientnetv2-s/ok.txt", b"x")
            z.writestr("efficientnetv2-s/zeros", b"\0" * size)
    else:
        _archive(archive, lambda tar: (_file(tar, "efficientnetv2-s/ok.txt"),
                                       _file(tar, "efficientnetv2-s/zeros", b"\0" * size)))
    return archive


@pytest.mark.parametrize("suffix", [".tgz", ".zip"])
def test_archive_over_the_cap_refused(tmp_path, monkeypatch, suffix):
    archive = _bomb(tmp_path, suffix)
    assert os.path.getsize(archive) < 2**20 // 50, "a small archive that unpacks large"
    destination = tmp_path / "out"
    pattern = rf"archive {re.escape(archive)}: .* 2\.0 MiB, over the cap of 1 MiB .*train\.max_archive_mb"
    with pytest.raises(weights_import.UnsafeArchiveError, match=pattern):
        weights_import.safe_extract(archive, str(destination), max_unpacked_bytes=2**20)
    assert os.listdir(destination) == [], "nothing may be extracted from an archive over the cap"
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(weights_import.UnsafeArchiveError, match=pattern):
        weights_import.load_pretrained(tiny(), archive, "s", max_unpacked_bytes=2**20)
    assert os.listdir(temp) == [], "the import's temporary folder is removed"


def test_archive_writing_past_the_cap_stopped(tmp_path, monkeypatch):
    """Headers that understate the sizes: the bytes written are counted too, and the partial
    extraction is removed."""
    archive = _bomb(tmp_path, ".tgz")
    real = weights_import._tar_members
    monkeypatch.setattr(weights_import, "_tar_members",
                        lambda tar: [dataclasses.replace(m, size=0) for m in real(tar)])
    destination = tmp_path / "out"
    with pytest.raises(weights_import.UnsafeArchiveError, match=r"unpacking wrote over 2\.0 MiB"):
        weights_import.safe_extract(archive, str(destination), max_unpacked_bytes=2**20)
    assert os.listdir(destination) == []


@pytest.mark.parametrize("suffix", [".tgz", ".zip"])
def test_archive_of_too_many_members_refused_before_unpacking(tmp_path, suffix):
    archive = str(tmp_path / f"many{suffix}")
    names = [f"efficientnetv2-s/{i}" for i in range(weights_import.MAX_ARCHIVE_MEMBERS + 1)]
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for name in names:
                z.writestr(name, b"")
    else:
        _archive(archive, lambda tar: [_file(tar, name, b"") for name in names])
    destination = tmp_path / "out"
    with pytest.raises(weights_import.UnsafeArchiveError,
                       match=rf"archive {re.escape(archive)} has more than 10000 members"):
        weights_import.safe_extract(archive, str(destination))
    assert os.listdir(destination) == []


def test_safe_extract_refuses_a_folder_with_files(tmp_path):
    archive = _bomb(tmp_path, ".tgz", size=10)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="is not empty"):
        weights_import.safe_extract(archive, str(tmp_path / "out"))
    assert (tmp_path / "out" / "mine.txt").read_text() == "user data"


def test_a_checkpoint_of_another_variant_without_its_config_is_named_by_its_blocks(tmp_path):
    _write_run(str(tmp_path), build_model("b0", num_classes=10, input_shape=(32, 32, 3)))
    os.remove(os.path.join(str(tmp_path), "config.yaml"))
    with pytest.raises(ValueError, match=r"does not match model 'efficientnetv2-s'.*Its weights have 21 blocks, as "
                                         r"EfficientNetV2-B0: use --model=b0"):
        weights_import.load_pretrained(tiny(), str(tmp_path), "s")
