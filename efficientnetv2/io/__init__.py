"""Import and export (TensorFlow): checkpoints of a run, the SavedModel/TFLite/.keras export and
prediction, keras.applications and reference-release weights, and the way to the input pipeline.
Depends on the model library (``efficientnetv2``); never on the trainer (``efficientnetv2.train``):
``tests/test_layering.py`` enforces it.
"""
