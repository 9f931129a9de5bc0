"""The model library runs under the JAX backend too (a subprocess, since the backend is per process),
and imports no TensorFlow there: half of the layering that tests/test_layering.py enforces. The same
subprocess runs benchmarks/gpu_train_throughput.py end to end at a tiny size (the GPU benchmark's
flow on this CPU)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import runpy, sys
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

    # benchmarks/gpu_train_throughput.py end to end at a tiny size, in the same process (one JAX start);
    # one batch size (its search from a memory estimate is tested in tests/test_gpu_benchmark.py).
    sys.argv = ["gpu_train_throughput.py", "--variants", "s", "--image_size", "32",
                "--batch_sizes", "4", "--steps", "2", "--warmup", "1", "--num_classes", "5",
                "--blocks", "r1_k3_s2_e1_i8_o8_c1,r1_k3_s1_e2_i8_o8_se0.25", "--head_filters", "16",
                "--peak_matmul_size", "128"]
    runpy.run_path("benchmarks/gpu_train_throughput.py", run_name="__main__")
    print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules)
    """
)


@pytest.fixture(scope="module")
def jax_run():
    """One subprocess under KERAS_BACKEND=jax (the backend is chosen per process) for both tests."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    # XLA's CPU backend without its LLVM optimizations: JAX compiles every initializer and step it runs
    # (each weight's random initializer is a program of its own), and compiling dominates this check
    # (about 34 -> 17 s of CPU); what the programs compute is unchanged.
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_one_training_step_under_jax(jax_run):
    line = [l for l in jax_run if l.startswith("JAX_OK")][0]
    _, loss, changed = line.split()
    assert changed == "True"
    assert float(loss) > 0


def test_gpu_benchmark_tiny_run_under_jax_prints_throughput_without_tensorflow(jax_run):
    assert any(l.startswith("# measured peak:") and "TFLOP/s" in l for l in jax_run), jax_run
    for mode in ("train", "infer"):
        found = [l for l in jax_run if l.startswith(f"s {mode} 32px batch 4:") and "img/s" in l]
        assert found, jax_run
        images_s = float(found[0].split(":")[1].split("img/s")[0])
        assert images_s > 0
        assert "MFU" in found[0]
    assert "TENSORFLOW_IMPORTED False" in jax_run, jax_run
