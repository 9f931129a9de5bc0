"""The README's Python examples run as they stand, in a fresh interpreter at the repository's root."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_python_block(section):
    """The first ```python block under the README heading ``section``."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end >= 0 else len(text)]
    begin = body.index("```python\n") + len("```python\n")
    return body[begin:body.index("```", begin)]


def test_the_progressive_example_is_found():
    code = first_python_block("Progressive learning in your own Keras code")
    assert "progressive_fit.fit(" in code and "keras.applications.EfficientNetV2B0" in code


@pytest.mark.slow
def test_the_progressive_example_runs_as_it_stands(tmp_path):
    code = first_python_block("Progressive learning in your own Keras code")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    # Its last line: the image size and dropout rate of each epoch, two stages of two epochs.
    assert result.stdout.strip().splitlines()[-1] == "[64.0, 64.0, 96.0, 96.0] [0.1, 0.1, 0.2, 0.2]"
    assert os.listdir(tmp_path) == []  # It writes nothing.
