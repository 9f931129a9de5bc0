"""benchmarks/gpu_train_throughput.py's batch search from a memory estimate, with a fake device (this
CPU reports no memory figures). Its end-to-end run under JAX is in tests/test_jax_backend.py (one JAX
subprocess for both)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GIB = 2**30


class _Stats:
    def __init__(self, argument, output, alias, temp):
        self.argument_size_in_bytes, self.output_size_in_bytes = argument, output
        self.alias_size_in_bytes, self.temp_size_in_bytes = alias, temp


class _Compiled:
    def __init__(self, stats):
        self.stats = stats

    def memory_analysis(self):
        return self.stats


class _Device:
    def memory_stats(self):
        return {"bytes_limit": 100 * GIB, "bytes_in_use": 0}


class _Bench:
    """A step that needs 1 GiB of state and 0.1 GiB per image."""

    def compile(self, mode, batch, image_size):
        per_batch = int(0.1 * GIB * batch)
        return _Compiled(_Stats(argument=GIB, output=GIB, alias=GIB, temp=per_batch)), 12.0

    def state_bytes(self, mode):
        return GIB


@pytest.fixture
def gpu_benchmark(monkeypatch):
    # The script sets these by default when imported; keep this process's values.
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "tensorflow"))
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")
    pytest.importorskip("jax")
    from benchmarks import gpu_train_throughput

    return gpu_train_throughput


def test_batch_from_memory_estimate(gpu_benchmark):
    # (90 GiB usable - 1 GiB state) / 0.1 GiB per image = 890 -> 888 (a multiple of 8).
    assert gpu_benchmark.batch_that_fits(GIB + int(3.2 * GIB), GIB, 32, 100 * GIB, 0.9) == 888
    assert gpu_benchmark.batch_that_fits(2 * GIB, 3 * GIB, 8, 2 * GIB, 0.9) == 0
    candidates = gpu_benchmark.estimated_candidates(_Bench(), "train", 300, 32, _Device(), 0.9, 4096)
    assert candidates[0] == 888
    assert candidates == sorted(candidates, reverse=True) and all(c % 8 == 0 for c in candidates)
    capped = gpu_benchmark.estimated_candidates(_Bench(), "train", 300, 32, _Device(), 0.9, 512)
    assert capped[0] == 512


def test_search_steps_down_after_out_of_memory(gpu_benchmark):
    def run(batch):
        if batch > 800:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return batch * 2

    assert gpu_benchmark.first_that_fits(run, [888, 792, 712]) == (792, 1584)
    assert gpu_benchmark.first_that_fits(run, [900, 850]) == (None, None)

    def broken(batch):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        gpu_benchmark.first_that_fits(broken, [8])


def test_no_memory_figures_means_doubling(gpu_benchmark):
    class CpuDevice:
        def memory_stats(self):
            return None

    assert gpu_benchmark.estimated_candidates(_Bench(), "train", 32, 2, CpuDevice(), 0.9, 64) is None
