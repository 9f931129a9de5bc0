"""A procedurally generated image-classification set: the default when no data is given.

Ten classes, each a shape or a pattern drawn in one random color on a random background with
Gaussian noise: circle, square, triangle, ring, cross (at a random position and scale), and
horizontal, vertical, diagonal stripes, checkerboard, dots (at a random frequency and phase).
Image `index` of a split is rendered in the TF graph at any resolution from (seed, split, index),
so it is the same picture at every size and in every run; its label is index % 10 (balanced).
A small convnet learns it to high accuracy in minutes on a CPU: it is a smoke test of the
training loop, not a benchmark.  Train on real images with `--data_dir` (see `get_source`).
"""

import functools
import math
from typing import Optional

import tensorflow as tf

from datasets import ordering
from datasets.source import Source, check_split

CLASS_NAMES = ("circle", "square", "triangle", "ring", "cross", "horizontal_stripes",
               "vertical_stripes", "diagonal_stripes", "checkerboard", "dots")
_SPLIT_STREAMS = {"train": 0, "eval": 1}


def _edge(signed_distance: tf.Tensor, image_size: int) -> tf.Tensor:
    """Coverage in [0, 1] from a signed distance (> 0 inside) in image-width units, one-pixel soft edge."""
    return tf.clip_by_value(signed_distance * image_size + 0.5, 0.0, 1.0)


def _stripes(t: tf.Tensor, frequency, phase) -> tf.Tensor:
    """Signed distance to the nearest edge of stripes across t (two stripes per period)."""
    return tf.sin(2.0 * math.pi * (frequency * t + phase)) / (2.0 * math.pi * frequency)


def _shape_distance(label, u, v, p) -> tf.Tensor:
    """Signed distance of class `label` on coordinate grids u, v (in [0, 1]); p: 8 uniforms."""
    cx, cy = 0.3 + 0.4 * p[0], 0.3 + 0.4 * p[1]
    radius = 0.18 + 0.14 * p[2]
    dx, dy = u - cx, v - cy
    distance = tf.sqrt(dx * dx + dy * dy)
    frequency = 3.0 + 4.0 * p[3]
    phase_u, phase_v = p[4], p[5]
    diagonal = tf.where(p[6] < 0.5, u + v, u - v) / math.sqrt(2.0)

    def triangle():  # Pointing up, inradius radius / 2; inside all three edges.
        edges = [dy, -0.5 * dy + 0.866 * dx, -0.5 * dy - 0.866 * dx]
        return tf.reduce_min(tf.stack([0.5 * radius - e for e in edges]), axis=0)

    def checkerboard():
        a = _stripes(u, frequency, phase_u)
        b = _stripes(v, frequency, phase_v)
        return tf.sign(a * b) * tf.minimum(tf.abs(a), tf.abs(b))

    def dots():
        fu = tf.math.floormod(frequency * u + phase_u, 1.0) - 0.5
        fv = tf.math.floormod(frequency * v + phase_v, 1.0) - 0.5
        return (0.25 - tf.sqrt(fu * fu + fv * fv)) / frequency

    branches = [
        lambda: radius - distance,                                                    # circle
        lambda: 0.85 * radius - tf.maximum(tf.abs(dx), tf.abs(dy)),                   # square
        triangle,
        lambda: 0.3 * radius - tf.abs(distance - 0.7 * radius),                       # ring
        lambda: tf.maximum(tf.minimum(radius - tf.abs(dx), 0.3 * radius - tf.abs(dy)),
                           tf.minimum(0.3 * radius - tf.abs(dx), radius - tf.abs(dy))),  # cross
        lambda: _stripes(v, frequency, phase_v),                                      # horizontal
        lambda: _stripes(u, frequency, phase_u),                                      # vertical
        lambda: _stripes(diagonal, frequency, phase_u),                               # diagonal
        checkerboard,
        dots,
    ]
    return tf.switch_case(label, branches)


def render(index: tf.Tensor, image_size: int, seed: int = 0, split: str = "train") -> tf.Tensor:
    """Image `index` of `split`: uint8 [image_size, image_size, 3]; its class is index % 10."""
    check_split(split)
    index = tf.cast(index, tf.int64)
    label = tf.cast(index % len(CLASS_NAMES), tf.int32)
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, _SPLIT_STREAMS[split]], tf.int64), index)
    shape_seed, color_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    p = tf.random.stateless_uniform([8], shape_seed)
    colors = tf.random.stateless_uniform([2, 3], color_seed)
    background = colors[0]
    # Each channel of the foreground differs from the background by 0.35-0.65: always visible.
    foreground = tf.math.floormod(background + 0.35 + 0.3 * colors[1], 1.0)
    grid = (tf.range(image_size, dtype=tf.float32) + 0.5) / image_size
    v, u = tf.meshgrid(grid, grid, indexing="ij")
    coverage = _edge(_shape_distance(label, u, v, p), image_size)[:, :, None]
    image = coverage * foreground + (1.0 - coverage) * background
    noise_level = 0.08 * p[7]
    image += noise_level * tf.random.stateless_normal([image_size, image_size, 3], noise_seed)
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    image.set_shape([image_size, image_size, 3])
    return image


@functools.cache
def _renderer(image_size: int, seed: int, split: str):
    """``render`` at these settings as a graph function traced once per process: every epoch's
    pipeline (built anew) calls it instead of tracing the drawing again."""
    return tf.function(lambda index: render(index, image_size, seed, split), autograph=False,
                       input_signature=[tf.TensorSpec([], tf.int64)])


class SyntheticSource(Source):
    """Rendered shapes and patterns (see the module docstring): no files, any image size."""

    def __init__(self, train_examples: int = 10_000, eval_examples: int = 1_000, seed: int = 0):
        if train_examples < 1 or eval_examples < 1:
            raise ValueError(f"synthetic dataset needs >= 1 example per split, got "
                             f"train_examples={train_examples}, eval_examples={eval_examples}")
        self.name = "synthetic"
        self.num_classes = len(CLASS_NAMES)
        self.class_names = list(CLASS_NAMES)
        self.multi_label = False
        self.seed = seed
        self._sizes = {"train": train_examples, "eval": eval_examples}

    def num_examples(self, split: str) -> int:
        return self._sizes[check_split(split)]

    def examples(self, split: str, *, seed: Optional[tf.Tensor] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 image_size: int = 224) -> tf.data.Dataset:
        indices = ordering.shard_in_memory([tf.range(self.num_examples(split), dtype=tf.int64)],
                                           seed, input_context)

        draw = _renderer(image_size, self.seed, split)

        @tf.autograph.experimental.do_not_convert
        def example(index):
            return {"image": draw(index),
                    "label": tf.cast(index % self.num_classes, tf.int32),
                    "id": tf.strings.format("synthetic/{}#{}", (split, index))}

        return indices.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def describe(self) -> str:
        return (f"SYNTHETIC data: {self.num_classes} procedurally rendered classes "
                f"({', '.join(CLASS_NAMES)}), {self._sizes['train']} train / "
                f"{self._sizes['eval']} eval images. This is not real data: to train on real "
                "images pass --data_dir=<folder of class sub-folders, or of ImageNet TFRecord "
                "shards train-*/validation-*> (or --dataset=tfds:<name> with --data_dir=<TFDS dir>).")
