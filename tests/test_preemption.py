"""SIGTERM (a preemption): a checkpoint of the exact step within seconds, a distinct exit status, and a
restart that loses no step. Apart from tests/test_faults.py so that the two long fault runs go to
different test workers."""

import os
import re
import signal
import subprocess
import sys
import time

from efficientnetv2.train.training import PREEMPTED_EXIT_CODE
from tests.test_faults import ENV, ROOT, assert_same_checkpoints, checkpoint_values
from tests.training_helpers import tiny_hparams


STEPS = 20


def _main_command(model_dir):
    hparams = tiny_hparams(**{"train.epochs": 2, "train.steps_per_epoch": STEPS, "progressive.num_stages": 1,
                              "train.deterministic": True})
    return [sys.executable, "main.py", "--mode=train", "--dataset=synthetic", "--model=s",
            f"--model_dir={model_dir}", f"--hparams={hparams}"]


def test_sigterm_saves_within_seconds_exits_distinctly_and_loses_no_step(tmp_path):
    straight = subprocess.run(_main_command(tmp_path / "straight"), cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "preempted"
    process = subprocess.Popen(_main_command(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    # Signal a few steps into the first epoch, as the progress bar counts them ("  5/20 ..."): a
    # fixed delay lands after the epoch on a quiet machine and before the first step on a busy one.
    progress, shown, deadline = re.compile(rb"\b([3-9]|1[0-5])/%d\b" % STEPS), b"", time.time() + 240
    while not progress.search(shown) and process.poll() is None and time.time() < deadline:
        shown = shown[-200:] + os.read(process.stdout.fileno(), 4096)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    err = err.decode("utf-8", "replace")
    assert process.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert time.time() - sent < 20
    assert "preempted in epoch 1 after step" in err
    _, values = checkpoint_values(run_dir)
    step_in_epoch = int(values["step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE"])
    assert 0 < step_in_epoch < STEPS
    assert int(values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == step_in_epoch

    resumed = subprocess.run(_main_command(run_dir), cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {step_in_epoch} of the epoch" in resumed.stderr
    assert_same_checkpoints(tmp_path / "straight", run_dir)
