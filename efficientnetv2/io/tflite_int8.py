"""Full-integer TFLite: every op int8, uint8 input and output, calibrated on the run's training images.

``model_int8.tflite`` takes ``images`` uint8 [1, S, S, 3] and returns ``probabilities`` uint8
[1, classes]. Each side's real value is ``scale * (q - zero_point)`` with the tensor's quantization
parameters (``interpreter.get_input_details()[0]["quantization"]``): the input's are those of the
calibrated pixel range, (1.0, 0) for photos whose pixels span [0, 255], so the raw pixels go
in as they are; the output's are (1/256, 0), the converter's fixed range of a softmax.

The calibration images are training images (the run's own data; never the evaluation split, on
which the result is measured) in a fixed shuffled order, prepared as evaluation prepares its images
(``datasets.pipeline.eval_example``: center crop at the evaluation size).
"""

import numpy as np
import tensorflow as tf

from efficientnetv2.io.input_pipeline import input_pipeline

__all__ = ["calibration_images", "convert"]

CALIBRATION_SEED = 0


def calibration_images(config, image_size, count):
    """Up to ``count`` training images of the run's data, float32 [n, S, S, 3] in [0, 255]."""
    datasets = input_pipeline()

    src = datasets.get_source(config.data.dataset, config.data.data_dir)
    examples = src.examples("train", seed=tf.constant([CALIBRATION_SEED, 0], tf.int64), image_size=image_size)
    images = datasets.skipping.map_skipping_errors(
        examples.take(count),
        lambda example: datasets.pipeline.eval_example(example, image_size, src.num_classes, src.multi_label)[0],
        lambda example: example["id"])
    batches = [batch.numpy() for batch in images.batch(64)]
    if not batches:
        raise ValueError(f"export.tflite_int8: no training image of {src.describe()} could be decoded "
                         "to calibrate the quantization")
    return np.concatenate(batches)


def convert(function, module, images):
    """The TFLite flatbuffer of ``function`` (float32 [1, S, S, 3] -> probabilities), every op int8,
    uint8 input and output, activation ranges calibrated on ``images`` [n, S, S, 3]."""

    def representative_dataset():
        for image in images:
            yield [image[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    # Only integer kernels: the conversion fails rather than leave a float op an accelerator cannot run.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()
