"""benchmarks/gpu_train_throughput.py end to end on this CPU under JAX, at a tiny size (a subprocess:
the backend is chosen per process), and without TensorFlow."""

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
    sys.argv = ["gpu_train_throughput.py", "--variants", "s", "--image_size", "32",
                "--batch_sizes", "2", "--steps", "2", "--warmup", "1", "--num_classes", "5",
                "--blocks", "r1_k3_s2_e1_i8_o8_c1,r1_k3_s1_e2_i8_o8_se0.25", "--head_filters", "16",
                "--peak_matmul_size", "128"]
    runpy.run_path("benchmarks/gpu_train_throughput.py", run_name="__main__")
    print("TENSORFLOW_IMPORTED", "tensorflow" in sys.modules)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_tiny_run_under_jax_prints_throughput_without_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(l.startswith("# measured peak:") and "TFLOP/s" in l for l in lines), result.stdout
    for mode in ("train", "infer"):
        found = [l for l in lines if l.startswith(f"s {mode} 32px batch 2:") and "img/s" in l]
        assert found, result.stdout
        images_s = float(found[0].split(":")[1].split("img/s")[0])
        assert images_s > 0
        assert "MFU" in found[0]
    assert "TENSORFLOW_IMPORTED False" in lines, result.stdout
