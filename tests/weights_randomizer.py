"""Randomizes every weight of a model, batch-norm statistics included, so logits are of order 1+.

With the default initialization an EfficientNet's logits are about 0.01 and a wrong block could hide
under any absolute tolerance; after this, every block's mistake shows in the output.
"""

import numpy as np


def randomize_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        name = w.path
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("moving_mean", "beta", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if "dwconv2" in name:
                fan_in = int(np.prod(shape[:2]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        w.assign(value.astype(w.dtype))
