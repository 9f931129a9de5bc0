"""The command line end to end: train -> eval -> export -> predict on a tiny run, in fresh processes.

Each mode runs `main.py` the way a user does; the test checks what each one promises on its output
and on disk, and that the run's own config.yaml carries the model settings to the later modes.
"""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.training_helpers import tiny_hparams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def _main(*args, timeout=300):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_train_eval_export_predict(tmp_path, capsys, caplog):
    """Training in a fresh process, as a user runs it; the later modes in this one (through main()),
    reading the run's config.yaml from disk like any later command."""
    model_dir = str(tmp_path / "run")
    hparams = tiny_hparams(**{"train.epochs": 2, "train.steps_per_epoch": 2})
    train = _main("--mode=train", "--model=s", "--dataset=synthetic", f"--model_dir={model_dir}",
                  f"--hparams={hparams}")
    assert train.returncode == 0, train.stderr[-3000:]
    log = train.stderr
    assert "SYNTHETIC data" in log
    assert "Stage 1/2" in log and "Stage 2/2" in log
    assert "Training done: epoch 2" in log
    assert "Evaluation (EMA weights, 48 px)" in log
    # The progress bar's header places each epoch in the run (fit runs one epoch per call).
    assert "Epoch 1/2 (stage 1/2, 32 px)" in train.stdout and "Epoch 2/2 (stage 2/2, 48 px)" in train.stdout
    assert "Epoch 2/2\n" not in train.stdout
    assert os.path.isfile(os.path.join(model_dir, "config.yaml"))

    # Later modes read the run's config.yaml: no --model or --hparams needed.
    assert _main_in_process("--mode=eval", f"--model_dir={model_dir}") == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("top1 ")]
    assert line
    top1, top5 = float(line[0].split()[1]), float(line[0].split()[3])
    # The same checkpoint and data as the evaluation that ended training: the same figures.
    trained = re.search(r"Evaluation \(EMA weights, 48 px\): .*top1 ([0-9.]+), top5 ([0-9.]+)", log)
    assert trained, log[-2000:]
    assert (top1, top5) == (round(float(trained.group(1)), 4), round(float(trained.group(2)), 4))
    assert "(EfficientNetV2-S, checkpoint " in line[0] and "epoch 2, 48 px" in line[0]

    export_dir = str(tmp_path / "export")
    with caplog.at_level(logging.INFO, logger="absl"):
        assert _main_in_process("--mode=export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                                "--verbosity=0") == 0
    assert "Exported EfficientNetV2-S saved_model" in caplog.text
    assert os.path.isfile(os.path.join(export_dir, "saved_model", "saved_model.pb"))
    assert os.path.isfile(os.path.join(export_dir, "model.keras"))

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(image)
    assert _main_in_process("--mode=predict", f"--model_dir={model_dir}", f"--image={image}") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    probabilities = [float(l.split()[0]) for l in lines[1:6]]
    assert len(probabilities) == 5
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-4


@pytest.mark.parametrize("args, message", [
    (["--mode=train", "--model_dir={run}", "--hparams=train.epoks=3"], "did you mean 'train.epochs'"),
    (["--mode=train", "--model_dir={run}", "--hparams=train.batch_size=-8"], "train.batch_size"),
    (["--mode=train", "--model_dir={run}", "--hparams=train.lr_base=nan"], "expected a finite number"),
    (["--mode=train", "--model_dir={run}", "--model=s7"], "s7"),
    (["--mode=eval"], "--mode=eval needs --model_dir"),
])
def test_bad_command_lines_fail_before_any_work(tmp_path, caplog, args, message):
    from absl import app

    try:
        code = _main_in_process(*[a.format(run=tmp_path / "run") for a in args])
        text = caplog.text
    except app.UsageError as e:  # absl's app.run prints it with the usage line.
        code, text = 1, str(e)
    assert code != 0
    assert message in text, text[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _main_in_process(*args):
    """main.py's main() in this process (absl flags parsed from ``args``, restored after)."""
    from absl import flags
    from absl.testing import flagsaver

    import main

    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["main.py", *args])
        return main.main(["main.py"])


def test_a_failure_is_one_line_naming_what_and_where_with_the_traceback_only_when_asked(tmp_path, caplog):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's notes\n")
    args = ["--mode=train", f"--model_dir={a_file}", f"--hparams={tiny_hparams()}"]
    assert _main_in_process(*args) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage() == (f"NotADirectoryError: --model_dir {a_file} is a file, not a folder; pass a "
                                      "folder for the run (--verbosity=1 shows the traceback)")
    assert a_file.read_text() == "the user's notes\n"

    caplog.clear()
    assert _main_in_process(*args, "--verbosity=1") == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None  # The traceback, on request.


def test_one_line_strips_tensorflow_annotations():
    import tensorflow as tf

    import main

    error = tf.errors.DataLossError(None, None, "corrupted record at 164584 {{function_node __inference_x}} "
                                                "[Op:IteratorGetNext]\n  more detail\n")
    assert main._one_line(error) == "corrupted record at 164584"


@pytest.mark.parametrize("model_dir, where", [("{data}", "is"), ("{data}/run", "is inside"),
                                              ("{tmp}", "holds"), ("{tmp}/link/run", "is inside")])
def test_a_run_folder_nested_with_the_data_folder_is_refused_before_any_work(tmp_path, caplog, model_dir, where):
    data = tmp_path / "photos"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / name / "a.png")
    os.symlink(data, tmp_path / "link")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    model_dir = model_dir.format(data=data, tmp=tmp_path)
    # eval reads an existing run folder: one that does not exist is refused as such first.
    for mode in ("train", "train_and_eval") + (("eval",) if os.path.isdir(model_dir) else ()):
        caplog.clear()
        assert _main_in_process(f"--mode={mode}", f"--data_dir={data}", f"--model_dir={model_dir}",
                                f"--hparams={tiny_hparams()}") != 0
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and f"--model_dir {model_dir} {where} the data folder --data_dir {data}" in errors[0]
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_an_interrupt_outside_the_saving_steps_is_one_line_and_exit_130(tmp_path, caplog, monkeypatch):
    from efficientnetv2.train import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    assert _main_in_process("--mode=train", f"--model_dir={tmp_path / 'run'}", f"--hparams={tiny_hparams()}") == 130
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["Interrupted (Ctrl-C) without saving; what was written before is kept (a training run "
                      "resumes from its last checkpoint with the same command)."]


def test_resuming_with_another_variant_names_the_runs_variant_even_when_changes_are_allowed(tmp_path, caplog):
    from hparams import config as config_lib

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-3.index").write_bytes(b"")  # A run that trained: its config is compared.
    (run / "config.yaml").write_text(config_lib.dump(config_lib.load_config(dataset="synthetic", model="b0")))
    assert _main_in_process("--mode=train", "--model=efficientnetv2-s", "--dataset=synthetic", f"--model_dir={run}",
                            "--allow_config_change") != 0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "damaged" not in errors[0]
    assert (f"{run} holds checkpoints of EfficientNetV2-B0 and this command asks for another architecture "
            "(model.variant: 'b0' -> 'efficientnetv2-s'); --allow_config_change cannot change") in errors[0]
    assert "Resume with --model=b0" in errors[0]


@pytest.mark.parametrize("mode", ["eval", "export", "predict"])
def test_reading_modes_refuse_a_model_dir_that_is_a_file_or_a_model_that_contradicts_the_run(tmp_path, caplog,
                                                                                             mode):
    from hparams import config as config_lib

    notes = tmp_path / "notes.txt"
    notes.write_text("the user's notes\n")
    extra = [f"--image={notes}"] if mode == "predict" else []
    assert _main_in_process(f"--mode={mode}", f"--model_dir={notes}", *extra) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"--model_dir {notes} is a file, not a run folder; pass the folder training wrote (it holds config.yaml "
        "and checkpoints/)"]
    assert notes.read_text() == "the user's notes\n"

    caplog.clear()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_lib.dump(config_lib.load_config(dataset="synthetic", model="b0")))
    assert _main_in_process(f"--mode={mode}", f"--model_dir={run}", "--model=s", *extra) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"--model=s but {run} is a run of EfficientNetV2-B0 (model.variant in its config.yaml); drop --model (the "
        "run decides) or pass a run of EfficientNetV2-S"]
    assert sorted(os.listdir(run)) == ["config.yaml"]


def test_an_interrupted_export_is_one_line_with_the_signals_exit_code(tmp_path, caplog, monkeypatch):
    from efficientnetv2.io import export

    def interrupted(config, model_dir, export_dir, checkpoint=None):
        raise export.ExportInterrupted(f"export to {export_dir} stopped by SIGTERM; removed its temporary folder "
                                       f"X; {export_dir} is as it was", 15)

    monkeypatch.setattr(export, "export_run", interrupted)
    (tmp_path / "run").mkdir()
    assert _main_in_process("--mode=export", f"--model_dir={tmp_path / 'run'}", "--dataset=synthetic",
                            f"--export_dir={tmp_path / 'out'}") == 143
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"export to {tmp_path / 'out'} stopped by SIGTERM; removed its temporary folder X; "
                      f"{tmp_path / 'out'} is as it was"]
