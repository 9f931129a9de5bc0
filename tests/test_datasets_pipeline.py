"""datasets/pipeline.py: the train and eval tf.data builders end to end on small sources."""

import os

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import ordering
from tests.datasets_helpers import (eager_and_mapped, first_batches, jpeg_bytes, make_folder, make_imagenet_dir,
                                    png_bytes, smooth_image, write, write_imagenet21k_shards)

AUGMENT = dict(randaug_magnitude=10.0, mixup_alpha=0.2, cutmix_alpha=1.0)


@pytest.fixture(scope="module")
def folder_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    make_folder(str(root / "train"), {"a": 5, "b": 5, "c": 4})
    write(str(root / "train" / "c" / "gray.jpg"), jpeg_bytes(smooth_image(50)[..., :1]))
    write(str(root / "train" / "c" / "rgba.png"), png_bytes(np.concatenate(
        [smooth_image(51), np.full([48, 64, 1], 255, np.uint8)], -1)))
    make_folder(str(root / "val"), {"a": 3, "b": 2, "c": 2}, seed=1)
    return datasets.get_source("auto", str(root))


def _train(src, **kwargs):
    kwargs = {"batch_size": 4, "image_size": 24, **kwargs}
    return datasets.build_train_dataset(src, **kwargs)


def test_example_functions_alone_and_in_map():
    example = {"image": jpeg_bytes(smooth_image(0)), "label": np.int32(2)}
    seed = np.array([1, 2], np.int64)
    image, label = eager_and_mapped(
        lambda e, s: datasets.pipeline.train_example(e, s, 16, 3, randaug_magnitude=10.0), example, seed)
    assert image.shape == (16, 16, 3) and label.tolist() == [0, 0, 1]
    image, label = eager_and_mapped(lambda e: datasets.pipeline.eval_example(e, 16, 3), example)
    assert image.shape == (16, 16, 3) and label.tolist() == [0, 0, 1]
    multi_hot = eager_and_mapped(lambda ids: datasets.pipeline.targets(ids, 4, multi_label=True),
                                 np.array([3, 0, 3], np.int32))
    assert multi_hot.tolist() == [1, 0, 0, 1]


def test_train_batches_have_static_shapes_and_one_hot_labels(folder_source):
    dataset = _train(folder_source, randaug_magnitude=5.0)
    images_spec, labels_spec = dataset.element_spec
    assert images_spec.shape == (4, 24, 24, 3) and images_spec.dtype == tf.uint8
    assert labels_spec.shape == (4, 3) and labels_spec.dtype == tf.float32
    batches = first_batches(dataset, 10)
    assert len(batches) == 16 // 4  # One epoch, the partial batch dropped.
    for images, labels in batches:
        np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
        assert set(np.unique(labels)) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def augmented_epoch(folder_source):
    return first_batches(_train(folder_source, seed=3, epoch=2, **AUGMENT), 10)


def test_same_seed_and_epoch_replays_the_epoch_exactly(folder_source, augmented_epoch):
    tf.random.set_seed(1234)  # TensorFlow's global seed must play no part.
    again = first_batches(_train(folder_source, seed=3, epoch=2, **AUGMENT), 10)
    for (x1, y1), (x2, y2) in zip(augmented_epoch, again, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_mixing_hands_the_images_over_unmixed_with_the_plan_that_mixed_the_labels(folder_source,
                                                                                 augmented_epoch):
    """With mixup/CutMix on, a batch is ((uint8 images, mix [B, 5]), mixed labels): the images are
    those of the same epoch without mixing, and `mixing.mixed_images` mixes them as the labels were
    (a pixel-exact CutMix box: each image's pasted region is its partner's, by the same area)."""
    plain = first_batches(_train(folder_source, seed=3, epoch=2, randaug_magnitude=10.0), 10)
    cutmix_batches = 0
    for ((images, mix), labels), (plain_images, plain_labels) in zip(augmented_epoch, plain, strict=True):
        assert images.dtype == np.uint8 and mix.shape == (4, 5)
        np.testing.assert_array_equal(images, plain_images)
        mixed = datasets.mixing.mixed_images((images, mix)).numpy()
        partner = plain_images[::-1].astype(np.float32)
        for i, (w, top, bottom, left, right) in enumerate(mix):
            region = np.zeros(images.shape[1:3], bool)
            region[int(top):int(bottom), int(left):int(right)] = True
            expected = np.where(region[..., None], images[i] + w * (partner[i] - images[i]), images[i])
            np.testing.assert_allclose(mixed[i], expected, atol=1e-3)
            partner_share = w * region.mean()
            np.testing.assert_allclose(labels[i], (1 - partner_share) * plain_labels[i]
                                       + partner_share * plain_labels[::-1][i], atol=1e-5)
        cutmix_batches += bool(np.all(mix[:, 0] == 1.0))
    assert 0 < cutmix_batches < len(plain)  # Both alphas on: some batches of each.


def test_other_epochs_and_seeds_differ(folder_source):
    # Without RandAugment and mixing (faster to build): crops and order alone must change.
    reference = first_batches(_train(folder_source, seed=3, epoch=2), 1)[0][0]
    for other in ({"seed": 3, "epoch": 3}, {"seed": 4, "epoch": 2}):
        assert not np.array_equal(reference, first_batches(_train(folder_source, **other), 1)[0][0])


def test_mixed_labels_still_sum_to_one(augmented_epoch):
    for images, labels in augmented_epoch:
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert any(not set(np.unique(labels)) <= {0.0, 1.0} for _, labels in augmented_epoch)


def test_every_epoch_reads_every_example_once_in_a_new_order(folder_source):
    orders = []
    for epoch in (0, 1):
        seed = datasets.pipeline._stream_seed(0, epoch, datasets.pipeline._ORDER_STREAM)
        orders.append([e["id"].numpy() for e in folder_source.examples("train", seed=seed)])
    assert sorted(orders[0]) == sorted(orders[1]) and len(set(orders[0])) == 16
    assert orders[0] != orders[1]


def test_eval_keeps_every_example_in_a_fixed_order(folder_source):
    dataset = datasets.build_eval_dataset(folder_source, batch_size=3, image_size=20)
    assert dataset.element_spec[0].shape.as_list() == [None, 20, 20, 3]
    batches = first_batches(dataset, 10)
    assert [len(labels) for _, labels in batches] == [3, 3, 1]
    labels = np.concatenate([labels for _, labels in batches])
    np.testing.assert_array_equal(labels.argmax(axis=1), [0, 0, 0, 1, 1, 2, 2])
    again = first_batches(datasets.build_eval_dataset(folder_source, batch_size=3, image_size=20), 10)
    np.testing.assert_array_equal(batches[0][0], again[0][0])


def test_steps_per_epoch(folder_source):
    assert datasets.steps_per_epoch(folder_source, 5) == 3
    assert datasets.steps_per_epoch(folder_source, 1000) == 1
    with pytest.raises(ValueError, match="global_batch_size=0"):
        datasets.steps_per_epoch(folder_source, 0)


def test_bad_magnitude_fails_before_building(folder_source):
    with pytest.raises(ValueError, match="randaug_magnitude=45"):
        _train(folder_source, randaug_magnitude=45)


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    make_folder(str(tmp_path / "train"), {"a": 3, "b": 3})
    make_folder(str(tmp_path / "val"), {"a": 1, "b": 1})
    good = jpeg_bytes(smooth_image(9))
    write(str(tmp_path / "train" / "a" / "zero.jpg"), b"")
    write(str(tmp_path / "train" / "a" / "truncated.jpg"), good[: len(good) // 3])
    write(str(tmp_path / "train" / "b" / "random.jpeg"), os.urandom(500))
    write(str(tmp_path / "train" / "b" / "text.png"), b"hello, not a png")
    write(str(tmp_path / "val" / "a" / "zero.JPG"), b"")
    src = datasets.get_source("auto", str(tmp_path))
    assert src.num_examples("train") == 10
    before = datasets.skipped_images()
    batches = first_batches(_train(src, batch_size=2, randaug_magnitude=5.0), 10)
    assert len(batches) == 3 and datasets.skipped_images() - before == 4
    evaluated = first_batches(datasets.build_eval_dataset(src, batch_size=8, image_size=16), 10)
    assert sum(len(labels) for _, labels in evaluated) == 2
    assert datasets.skipped_images() - before == 5


def test_input_pipelines_split_the_data_disjointly(tmp_path, folder_source):
    make_imagenet_dir(str(tmp_path / "two_shards"), train=9, validation=2, num_shards=2)
    make_imagenet_dir(str(tmp_path / "one_shard"), train=9, validation=2, num_shards=1)
    sources = [folder_source, datasets.get_source("imagenet", str(tmp_path / "two_shards")),
               datasets.get_source("imagenet", str(tmp_path / "one_shard"))]
    seed = tf.constant([1, 2], tf.int64)
    for src in sources:
        everything = [e["id"].numpy() for e in src.examples("train", seed=seed)]
        parts = [[e["id"].numpy() for e in src.examples(
            "train", seed=seed, input_context=tf.distribute.InputContext(2, i, 2))] for i in (0, 1)]
        assert not set(parts[0]) & set(parts[1]), src.describe()
        assert sorted(parts[0] + parts[1]) == sorted(everything), src.describe()
    # Two shards for two pipelines: each reads whole files.
    files, element_sharding = ordering.shard_files(["b", "a", "c"], tf.distribute.InputContext(2, 1, 1))
    assert (files, element_sharding) == (["b"], False)
    assert ordering.shard_files(["a"], tf.distribute.InputContext(2, 1, 1)) == (["a"], True)


def test_pipelines_augment_differently(folder_source):
    contexts = [tf.distribute.InputContext(2, i, 2) for i in (0, 1)]
    first = [first_batches(_train(folder_source, batch_size=2, input_context=c), 1)[0][0] for c in contexts]
    assert first[0].shape == (2, 24, 24, 3) and not np.array_equal(first[0], first[1])


def test_tfrecord_train_is_deterministic_and_eval_complete(tmp_path):
    src = datasets.get_source("auto", make_imagenet_dir(str(tmp_path), train=10, validation=5))
    first = first_batches(_train(src, seed=1), 5)
    assert len(first) == 2 and first[0][1].shape == (4, 1000)
    np.testing.assert_array_equal(first[1][0], first_batches(_train(src, seed=1), 2)[1][0])
    labels = np.concatenate([y for _, y in first_batches(datasets.build_eval_dataset(src, 2, 16), 9)])
    assert sorted(labels.argmax(axis=1)) == [0, 0, 1, 1, 2]


def test_multi_label_targets_are_multi_hot(tmp_path):
    image = jpeg_bytes(smooth_image(0))
    write_imagenet21k_shards(str(tmp_path), "train", [image] * 4, [[0, 4], [2], [], [1, 1]])
    write_imagenet21k_shards(str(tmp_path), "validation", [image], [[1, 3]])
    src = datasets.get_source("imagenet21k", str(tmp_path), num_classes=5)
    _, labels = first_batches(_train(src, batch_size=4), 1)[0]
    assert sorted(map(tuple, labels.astype(int))) == sorted(
        [(1, 0, 0, 0, 1), (0, 0, 1, 0, 0), (0, 0, 0, 0, 0), (0, 1, 0, 0, 0)])
    _, labels = first_batches(datasets.build_eval_dataset(src, 4, 16), 1)[0]
    np.testing.assert_array_equal(labels, [[0, 1, 0, 1, 0]])


def test_synthetic_source_through_the_pipeline():
    src = datasets.get_source(synthetic_train_examples=12, synthetic_eval_examples=5)
    images, labels = first_batches(_train(src, image_size=16), 1)[0]
    assert images.shape == (4, 16, 16, 3) and labels.shape == (4, 10)
    assert [len(y) for _, y in first_batches(datasets.build_eval_dataset(src, 4, 16), 5)] == [4, 1]
