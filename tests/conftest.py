import os
import sys

# Quiet TensorFlow's start-up banner; tests run from the repository root without installing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    # The slow set keeps TensorFlow's graph optimizations on; the quick one runs without them (in the
    # processes that run tests: not in xdist's controller, which would import TensorFlow for nothing).
    controller = not hasattr(config, "workerinput") and (config.getoption("numprocesses", None) or 0) > 0
    if not controller and "slow" not in (config.getoption("markexpr") or "").replace("not slow", ""):
        from tests.training_helpers import without_graph_optimizations

        without_graph_optimizations()


# The longest test files, longest first. With `--dist loadfile` a file runs whole on one worker, and
# the workers take files in collection order (pytest.ini turns off xdist's reordering by test count,
# which put these few-test files last): started first, they overlap the many short files instead of
# leaving one worker alone at the end; the files that run longest (by `--durations`) are listed,
# so that the last minute is short files. The order is only a schedule.
LONGEST_FIRST = [
    "test_faults.py",
    "test_preemption.py",
    "test_training.py",
    "test_steps_per_execution.py",
    "test_progressive.py",
    "test_export.py",
    "test_datasets_service.py",
    "test_main.py",
    "test_weights_import.py",
    "test_model.py",
    "test_datasets_pipeline.py",
    "test_keras_applications.py",
    "test_datasets_randaugment.py",
    "test_jax_backend.py",
    "test_imagenet21k.py",
    "test_data_faults.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: the rest keep their order.
