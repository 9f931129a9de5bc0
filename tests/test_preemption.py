"""SIGTERM (a preemption) and Ctrl-C: a checkpoint of the exact step within seconds, a distinct exit
status, and a restart that loses no step; a second Ctrl-C aborts. Apart from tests/test_faults.py
so that the two long fault runs go to different test workers."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

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


def _signal_a_few_steps_in(process, signum):
    progress, shown, deadline = re.compile(rb"\b([3-9]|1[0-5])/%d\b" % STEPS), b"", time.time() + 240
    while not progress.search(shown) and process.poll() is None and time.time() < deadline:
        shown = shown[-200:] + os.read(process.stdout.fileno(), 4096)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return err.decode("utf-8", "replace")


def test_ctrl_c_saves_the_exact_step_in_one_line_and_exits_as_a_preemption(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_main_command(run_dir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    err = _signal_a_few_steps_in(process, signal.SIGINT)
    assert process.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "Ctrl-C received: saving a checkpoint after the current step" in err
    assert re.search(r"interrupted \(Ctrl-C\) in epoch 1 after step \d+/%d; checkpoint .*ckpt-\d+\. Run the same "
                     r"command to resume\." % STEPS, err), err[-3000:]
    _, values = checkpoint_values(run_dir)
    assert 0 < int(values["step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE"]) < STEPS
    assert not (run_dir / "run.lock").exists()


def test_a_second_ctrl_c_aborts_at_once_and_signal_handlers_are_restored():
    from efficientnetv2.train import interrupts

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts.StopSignals() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        signal.raise_signal(signal.SIGINT)  # Handled at once, in this (the main) thread.
        assert stop.requested.is_set() and stop.stopped == "interrupted (Ctrl-C)"
        signal.raise_signal(signal.SIGTERM)  # A SIGTERM after the request changes nothing.
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
