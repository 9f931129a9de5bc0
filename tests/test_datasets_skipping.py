"""datasets/skipping.py: map_skipping_errors keeps order, drops and names the failures, counts them."""

import numpy as np
import pytest
import tensorflow as tf

import datasets
from datasets import skipping


@pytest.fixture(autouse=True)
def _restore_the_count():
    """Other tests in this process expect the first skips' warnings: put the count back."""
    before = datasets.skipped_images()
    yield
    skipping._counter("images").assign(before)


def _fails_at(bad):
    def fn(index, name):
        ok = tf.reduce_all(tf.not_equal(index, tf.constant(sorted(bad) or [-1], tf.int64)))
        with tf.control_dependencies([tf.debugging.Assert(ok, [index])]):
            return tf.fill([2, 3], tf.cast(index, tf.float32)), name
    return fn


@pytest.mark.parametrize("window", [1, 4, 16])
@pytest.mark.parametrize("bad", [set(), {0}, {3, 4, 5, 6, 7, 8}, {15, 16, 17, 31, 39}, set(range(40))])
def test_failures_anywhere_in_a_window_are_dropped_named_and_counted(window, bad, capfd):
    names = tf.constant([f"example-{i}" for i in range(40)])
    dataset = tf.data.Dataset.zip(tf.data.Dataset.range(40), tf.data.Dataset.from_tensor_slices(names))
    mapped = skipping.map_skipping_errors(dataset, _fails_at(bad), lambda index, name: name,
                                          window=window)
    assert mapped.element_spec[0].shape == [2, 3]  # Static shapes kept.
    capfd.readouterr()
    before = datasets.skipped_images()
    outputs = list(mapped.as_numpy_iterator())
    kept = [i for i in range(40) if i not in bad]
    assert [int(values[0, 0]) for values, _ in outputs] == kept
    assert [name.decode() for _, name in outputs] == [f"example-{i}" for i in kept]
    assert datasets.skipped_images() - before == len(bad)
    logged = [line.split("skipped undecodable image ")[1].split(" (")[0]
              for line in capfd.readouterr().err.splitlines() if "skipped undecodable image" in line]
    assert before + len(bad) <= skipping._MAX_LOGGED  # All logged.
    assert sorted(logged) == sorted(f"example-{i}" for i in bad)  # Windows run in parallel.


def test_a_window_below_one_is_an_error():
    with pytest.raises(ValueError, match="window=0"):
        skipping.map_skipping_errors(tf.data.Dataset.range(3), lambda x: x, tf.strings.as_string, window=0)


def test_single_tensor_and_dict_elements():
    numbers = skipping.map_skipping_errors(tf.data.Dataset.range(5), lambda x: x * 2,
                                           tf.strings.as_string, window=2)
    assert list(numbers.as_numpy_iterator()) == [0, 2, 4, 6, 8]
    records = tf.data.Dataset.range(5).map(lambda x: {"x": x, "id": tf.strings.as_string(x)})
    mapped = skipping.map_skipping_errors(records, lambda r: r["x"] + 1, lambda r: r["id"], window=3)
    assert list(mapped.as_numpy_iterator()) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(list(mapped.as_numpy_iterator()), np.arange(1, 6))


def test_damaged_shards_are_summed_by_kind_and_the_first_ones_named():
    shards = [skipping.DamagedShard(f"s{i:02d}", "corrupt" if i % 3 else "missing", i)
              for i in range(skipping._MAX_NAMED_SHARDS + 2)]
    text = skipping.describe_damaged_shards(shards)
    assert text.startswith("12 damaged TFRecord shards skipped (8 corrupt, 4 missing): "
                           "s00 (missing: could not be opened), s01 (corrupt: cut short after 1 records)")
    assert "s09" in text and "s10" not in text and text.endswith(" and 2 more")
    assert skipping.describe_damaged_shards([]) == "0 damaged TFRecord shards skipped (0 corrupt, 0 missing)"
