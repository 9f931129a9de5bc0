"""Small on-disk datasets for the tests of `datasets/`: images, folders and TFRecord shards."""

import io
import os
import zlib
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from datasets import records

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENETTE = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "imagenette"))


def smooth_image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A uint8 [H, W, 3] image with smooth gradients and a bright square (photo-like, not noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(x / width * rng.uniform(1, 6) + rng.uniform(0, 6)),
                      128 + 100 * np.cos(y / height * rng.uniform(1, 6) + rng.uniform(0, 6)),
                      128 + 60 * np.sin((x + y) / (height + width) * rng.uniform(1, 6))], axis=-1)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top:top + height // 3, left:left + width // 3] = rng.uniform(180, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def png_bytes(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def cmyk_jpeg_bytes(image: np.ndarray) -> bytes:
    """A CMYK JPEG (needs Pillow: TensorFlow cannot write one)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def pillow_bytes(image: np.ndarray, image_format: str) -> bytes:
    """`image` encoded by Pillow as `image_format` ("GIF", "BMP", "WEBP", ...)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def png_bomb(height: int, width: int) -> bytes:
    """A valid 1-bit grayscale PNG of `height` x `width` zeros: a few hundred KB declaring any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte "none", then the row's bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_folder(root: str, class_counts: Dict[str, int], seed: int = 0, size=(40, 48),
                extension: str = ".jpg") -> List[str]:
    """root/<class>/<i><extension> JPEGs (PNGs for .png); returns the written paths."""
    paths = []
    for c, (name, count) in enumerate(sorted(class_counts.items())):
        for i in range(count):
            image = smooth_image(seed * 1000 + c * 100 + i, *size)
            data = png_bytes(image) if extension.lower() == ".png" else jpeg_bytes(image)
            paths.append(write(os.path.join(root, name, f"{i:03d}{extension}"), data))
    return paths


def _write_shards(directory: str, split: str, examples: Sequence[tf.train.Example],
                  num_shards: int) -> List[str]:
    """Records dealt round-robin to `num_shards` shards of `split`."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, records.shard_name(split, i, num_shards)) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, example in enumerate(examples):
        writers[i % num_shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return paths


def write_imagenet_shards(directory: str, split: str, images: Sequence[bytes],
                          labels: Sequence[int], num_shards: int = 2) -> List[str]:
    """ImageNet-format shards of (image bytes, 0-based label)."""
    return _write_shards(directory, split, [records.imagenet_example(data, label)
                                            for data, label in zip(images, labels)], num_shards)


def write_imagenet21k_shards(directory: str, split: str, images: Sequence[bytes],
                             labels: Sequence[Sequence[int]], num_shards: int = 1) -> List[str]:
    """ImageNet-21k-format shards of (image bytes, 0-based label ids), ids img0, img1, ..."""
    return _write_shards(directory, split, [records.imagenet21k_example(data, ids, image_id=f"img{i}")
                                            for i, (data, ids) in enumerate(zip(images, labels))],
                         num_shards)


def make_imagenet_dir(directory: str, train: int = 12, validation: int = 5, num_classes: int = 3,
                      num_shards: int = 2) -> str:
    """A small ImageNet-format folder: JPEGs with labels i % num_classes."""
    for split, count, offset in (("train", train, 0), ("validation", validation, 500)):
        images = [jpeg_bytes(smooth_image(offset + i)) for i in range(count)]
        write_imagenet_shards(directory, split, images, [i % num_classes for i in range(count)],
                              num_shards)
    return directory


def first_batches(dataset: tf.data.Dataset, count: int = 2) -> List:
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset.take(count)]


def eager_and_mapped(fn, *inputs):
    """fn(*inputs) run eagerly and inside Dataset.map; asserts they agree, returns the eager one.

    big_vision's rule: ops behave differently in graph mode often enough to test both.
    """
    eager = tf.nest.map_structure(lambda t: np.asarray(t), fn(*inputs))
    dataset = tf.data.Dataset.from_tensors(tf.nest.map_structure(tf.convert_to_tensor, inputs)).map(fn)
    mapped = tf.nest.map_structure(lambda t: t.numpy(), next(iter(dataset)))
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4), eager, mapped)
    return eager
