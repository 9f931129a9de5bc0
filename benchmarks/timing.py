"""Interleaved timing and a record of the conditions, shared by the model benchmarks.

On a shared machine the speed of one run drifts with what else runs, so every benchmark here times
the things it compares in one process, alternating them within each repetition (A B, B A, A B, ...),
and reports medians and the median of the per-repetition ratios, never absolute numbers from
separate runs. ``conditions()`` prints what a reader needs to judge a table: versions, cores, CPU
flags, load before and after.
"""

import os
import platform
import statistics
import time

import numpy as np

__all__ = [
    "conditions", "print_conditions", "interleave", "median", "paired_ratio", "markdown_table",
    "cpu_flags", "compiled_step_calls",
]


def cpu_flags():
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "n/a"


def conditions(**extra):
    """A dict of the run's conditions: backend and versions, cores, CPU, bf16 flags, load."""
    import keras

    info = {"keras": keras.__version__, "backend": keras.backend.backend()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = ",".join(d.device_type for d in tf.config.list_physical_devices())
    elif keras.backend.backend() == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = ",".join(str(d) for d in jax.devices())
    info["cpu"] = _cpu_model()
    info["cores (usable/total)"] = f"{len(os.sched_getaffinity(0))}/{os.cpu_count()}"
    flags = cpu_flags()
    info["bf16 cpu flags"] = ",".join(sorted(f for f in flags if "bf16" in f)) or "none"
    info["load average (1, 5, 15 min)"] = _load()
    info.update(extra)
    return info


def print_conditions(info, title="conditions"):
    print(f"# {title}")
    for key, value in info.items():
        print(f"#   {key}: {value}")


def interleave(fns, repeats, cpu_times=None):
    """Runs every callable of ``fns`` (a dict name -> fn) ``repeats`` times, alternating the order.

    Returns ``{name: [wall seconds, ...]}``. Repetition ``r`` runs the callables in order when ``r``
    is even and in reverse when odd, so neither side always runs first (after a pause, say). When
    ``cpu_times`` is a dict, ``cpu_times[name]`` gets the process CPU seconds (all threads) of each
    run: less sensitive than wall time to other processes taking the cores.
    """
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            cpu = time.process_time()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - cpu)
    return times


def compiled_step_calls(x, y, batch_size):
    """How to time a compiled model's steps alone on in-memory batches of ``x``, ``y``:
    ``{"train": model -> (() -> train_on_batch on every batch), "infer": ... predict_on_batch}``."""
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {
        "train": lambda model: lambda: [model.train_on_batch(a, b) for a, b in batches],
        "infer": lambda model: lambda: [np.asarray(model.predict_on_batch(a)) for a, _ in batches],
    }


def median(values):
    return statistics.median(values)


def paired_ratio(times_a, times_b):
    """Median over repetitions of ``time_b / time_a``: speed of A relative to B (> 1: A faster)."""
    return statistics.median(b / a for a, b in zip(times_a, times_b))


def markdown_table(headers, rows):
    """A markdown table of ``rows`` (sequences of cells, formatted with ``str``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
