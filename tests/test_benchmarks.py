"""The pure parts of the benchmarks: the Fused-MBConv ablation's networks (benchmarks/fused_ablation.py),
the time-to-accuracy measure (benchmarks/time_to_accuracy.py) and the start-up shard sets and probes
(benchmarks/startup.py)."""

import os

import numpy as np
import pytest

from benchmarks.fused_ablation import B4_DEPTH, B4_WIDTH, ablation_blocks, build
from efficientnetv2 import block_strings
from efficientnetv2.flops import count_flops


@pytest.mark.parametrize("fused_stages", [0, 3, 5, 7])
def test_ablation_fuses_the_first_stages_without_se(fused_stages):
    stages = block_strings.decode_all(ablation_blocks(fused_stages))
    assert len(stages) == 7
    for number, stage in enumerate(stages, start=1):
        assert stage.fused == (number <= fused_stages)
        assert stage.se_ratio == (0.0 if stage.fused else 0.25)
    assert [s.kernel_size for s in stages] == [3, 3, 5, 3, 5, 5, 3]
    assert all(s.kernel_size == 3 for s in block_strings.decode_all(ablation_blocks(7, 3)))


def test_unfused_b4_multiply_adds_near_the_paper():
    # Paper (Table 3): EfficientNet-B4 4.5B FLOPs at 380 px.
    flops = count_flops("b0", 380, blocks=ablation_blocks(0), width=B4_WIDTH, depth=B4_DEPTH)
    assert 4.2e9 <= flops <= 4.6e9


@pytest.mark.slow
@pytest.mark.parametrize("fused_stages, paper", [(0, 19.3e6), (5, 43.4e6), (7, 132.0e6)])
def test_ablation_parameters_match_the_paper(fused_stages, paper):
    model, _ = build(fused_stages, 64)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert abs(trainable - paper) <= 0.01 * paper


def test_time_to_accuracy_takes_the_first_epoch_at_or_above_the_target():
    from benchmarks.time_to_accuracy import parse_args, time_to_reach

    curve = [(10.0, 0.2), (25.0, 0.5), (40.0, 0.45), (60.0, 0.55)]
    assert time_to_reach(curve, 0.5) == 25.0
    assert time_to_reach(curve, 0.55) == 60.0
    assert time_to_reach(curve, 0.6) is None
    args = parse_args(["--steps_per_epoch", "3", "--plot", "x.png"])
    assert (args.baseline_epochs, args.baseline_size, args.baseline_batch_size, args.eval_size) == (5, 128, 32, 128)
    assert args.hparams == "train.epochs=5"
    assert args.hparams_file.endswith("small_data.yaml") and args.plot == "x.png"


# -- Start-up on ImageNet-sized data (benchmarks/startup.py). ---------------------------------

def _startup_set(directory, train=40, validation=10):
    from benchmarks import startup

    return startup.write_shard_set(str(directory), {"train": (4, train), "validation": (2, validation)},
                                   startup.framed_records())


def test_startup_shards_are_imagenet_records_counted_once_per_run_folder(tmp_path, caplog):
    import logging

    import datasets
    from benchmarks import startup
    from datasets import tfrecord

    paths = _startup_set(tmp_path / "data")
    assert [os.path.basename(p) for p in paths[:2]] == ["train-00000-of-00004", "train-00001-of-00004"]
    run = str(tmp_path / "run")
    for expected in ("counted, counted", "cached, cached"):  # A first start, then a restart.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="absl"):
            source = datasets.get_source("imagenet", str(tmp_path / "data"), count_cache_dir=run)
            assert (source.num_examples("train"), source.num_examples("eval")) == (40, 10)
        assert startup.count_sources(caplog.text) == expected
    labels = [int(e["label"]) for e in source.examples("eval")]  # Stored 1..1000, read 0-based.
    assert sorted(labels) == list(range(10))
    renamed = startup.link_renamed(paths, str(tmp_path / "renamed"))
    assert os.path.basename(renamed[0]) == "train-00000-of-00004.tfrecord"
    assert datasets.get_source("imagenet", str(tmp_path / "renamed")).num_examples("train") == 40
    startup.drop_from_page_cache(paths)
    # The standard set is dealt as the reference converters deal it: the first shard passes the check.
    ranges = startup.shard_ranges(*reversed(tfrecord.IMAGENET_LAYOUT["train"]))
    sizes = {end - start for start, end in ranges}
    assert sizes == {1251, 1252} and ranges[-1][1] == 1_281_167 and ranges[0] == (0, 1251)


def test_startup_reads_proc_io_and_its_run_config_is_valid(tmp_path):
    from benchmarks import startup
    from hparams import config as config_lib

    io = startup.read_io()
    assert io["rchar"] > 0 and "read_bytes" in io
    notes = "first_step 110.5 4096 1000000\nexit 112.0 8192 2000000\n"
    assert startup.parse_report(notes, 100.0) == {
        "first_step": {"seconds": 10.5, "read_bytes": 4096, "rchar": 1_000_000},
        "exit": {"seconds": 12.0, "read_bytes": 8192, "rchar": 2_000_000}}
    config = config_lib.load_config(dataset="imagenet", data_dir=str(tmp_path), model="b0",
                                    overrides=startup.HPARAMS)
    assert (config.train.steps_per_epoch, config.progressive.num_stages, config.model.width) == (1000, 1, 0.25)


@pytest.mark.slow
def test_startup_measures_a_first_start_and_a_restart(tmp_path):
    from benchmarks import startup

    paths = _startup_set(tmp_path / "data")
    for counts in ("counted, counted", "cached, cached"):
        result = startup.start(str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "log"), paths)
        assert result["counts"] == counts and result["exit_code"] == 75  # Preempted after the first step.
        assert 0 < result["first_step"]["seconds"] <= result["exit"]["seconds"]
        assert result["first_step"]["rchar"] <= result["exit"]["rchar"]


def test_startup_benchmark_refuses_a_work_dir_folder_it_did_not_write(tmp_path):
    from benchmarks import startup

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="runs exists and was not written by this benchmark"):
        startup.write_sets(str(tmp_path), renamed=False)
    assert (tmp_path / "runs" / "mine.txt").read_text() == "a user's file"


# -- The markdown block every benchmark prints last (benchmarks/report.py). -------------------

def test_report_prints_the_command_from_the_repo_root_the_conditions_and_the_tables(capsys):
    from benchmarks import report

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "x.py")
    rep = report.Report("A title", script, ["--steps", "2", "--name", "a b"], image_size=96)
    table = rep.table(["run", "img/s"], "A caption.")
    table.add("ours", "12.5")
    with pytest.raises(ValueError, match="a row of 1 cells for a table of 2 columns"):
        table.add("short")
    rep.note("A note.")
    rep.print()
    out = capsys.readouterr().out
    assert "# ours | 12.5\n" in out  # The row as it came, for a reader watching a long run.
    block = out[out.index("### A title"):]
    assert "`python benchmarks/x.py --steps 2 --name 'a b'`" in block
    assert "- image_size: 96" in block and "- date: " in block and " before, " in block
    assert "A caption.\n\n| run | img/s |\n|---|---|\n| ours | 12.5 |\n\nA note." in block
    assert report.command("/elsewhere/y.py", []) == "python y.py"  # No folder of the machine it ran on.
