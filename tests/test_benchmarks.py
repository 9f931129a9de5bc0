"""The pure parts of the benchmarks: the Fused-MBConv ablation's networks (benchmarks/fused_ablation.py) and
the time-to-accuracy measure (benchmarks/time_to_accuracy.py)."""

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
    assert (args.baseline_epochs, args.baseline_size, args.baseline_batch_size, args.eval_size) == (6, 96, 32, 96)
    assert args.hparams_file.endswith("small_data.yaml") and args.plot == "x.png"
