"""EfficientNetV2 for TensorFlow/Keras: model library, tf.data input pipeline, training and export."""

import setuptools

# Ranges are the versions this project was installed and tested with (see README, "Tested with").
INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15.1,<3.16",
    "absl-py>=2.1,<3",
    "tensorflow-datasets>=4.9.10,<4.10",
    "numpy>=2.0,<2.5",
    "pyyaml>=6.0,<7",
    "h5py>=3.11,<4",
    "tensorboard>=2.21,<2.22",
]

# model.onnx (--mode=export, efficientnetv2/io/onnx_export.py) and its check in onnxruntime.
ONNX = ["tf2onnx>=1.17,<1.18", "onnx>=1.23,<1.24", "onnxruntime>=1.32,<1.33"]

EXTRAS = {
    "test": ["pytest>=9.0,<10", "pytest-xdist>=3.8,<4", "hypothesis>=6.100,<7", "jax[cpu]>=0.10.2,<0.11",
             "pillow>=10,<14", "importlib-resources>=6,<8", *ONNX],
    "onnx": ONNX,
    # keras-cv is only the comparison baseline of benchmarks/input_pipeline.py; matplotlib draws
    # benchmarks/time_to_accuracy.py --plot.
    "bench": ["keras-cv==0.9.0", "jax[cpu]>=0.10.2,<0.11", "matplotlib"],
}

setuptools.setup(
    name="efficientnetv2-keras",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["efficientnetv2*", "datasets*", "hparams*"]),
    py_modules=["main"],
    package_data={"hparams": ["*.yaml"], "efficientnetv2.io": ["*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
