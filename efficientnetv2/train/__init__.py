"""Training under ``tf.distribute`` (TensorFlow): the trainer, progressive learning, schedules,
optimizers with EMA, strategies, the run lock and the Keras workarounds. Depends on the model library
(``efficientnetv2``) and on ``efficientnetv2.io`` (checkpoints, weights import); nothing depends on it.
"""
