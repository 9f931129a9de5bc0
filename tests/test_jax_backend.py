"""The model library runs under the JAX backend too (a subprocess, since the backend is per process),
and imports no TensorFlow there: half of the layering that tests/test_layering.py enforces."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    # The backend-agnostic model library: no TensorFlow import, at import time nor to build a model.
    import efficientnetv2, efficientnetv2.block_strings, efficientnetv2.variants, efficientnetv2.blocks
    import efficientnetv2.model, efficientnetv2.flops
    from efficientnetv2 import build_model
    model = build_model("s", num_classes=4, input_shape=(32, 32, 3), drop_path_rate=0.2,
                        blocks="r1_k3_s1_e1_i8_o8_c1,r1_k3_s2_e2_i8_o16_c1,r2_k3_s2_e2_i16_o16_se0.25",
                        head_filters=32)
    assert efficientnetv2.flops.count_flops(model, image_size=32) > 0
    assert "tensorflow" not in sys.modules, "the model library imported TensorFlow under KERAS_BACKEND=jax"
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=True)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.eye(4, dtype="float32")
    before = [np.array(w) for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    changed = any(not np.allclose(a, np.array(b)) for a, b in zip(before, model.trainable_weights))
    print("JAX_OK", float(loss), changed)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_one_training_step_under_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("JAX_OK")][0]
    _, loss, changed = line.split()
    assert changed == "True"
    assert float(loss) > 0
