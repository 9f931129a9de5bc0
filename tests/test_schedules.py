import math

import pytest

from efficientnetv2.train import schedules
from efficientnetv2.train.schedules import ProgressiveSpec, stage_epochs, stage_params
from efficientnetv2.variants import get_variant


def _spec(name, round_to=0):
    v = get_variant(name)
    return ProgressiveSpec(
        image_size=(v.image_size.start, v.image_size.end),
        randaug_magnitude=(v.randaug_magnitude.start, v.randaug_magnitude.end),
        mixup_alpha=(v.mixup_alpha.start, v.mixup_alpha.end),
        dropout_rate=(v.dropout.start, v.dropout.end),
        round_image_size_to=round_to,
    )


@pytest.mark.parametrize(
    "variant, stage, size, randaug, mixup, dropout",
    [
        # The paper's endpoints (PAPER.md section 1): stage 0 at S_0, the last stage at S_e.
        ("s", 0, 128, 5, 0, 0.1), ("s", 3, 300, 15, 0, 0.3),
        ("m", 0, 128, 5, 0, 0.1), ("m", 3, 380, 20, 0.2, 0.4),
        ("l", 0, 128, 5, 0, 0.1), ("l", 3, 380, 25, 0.4, 0.5),
        # In between: S_i = S_0 + (S_e - S_0) * i / (M - 1), no rounding.
        ("s", 1, 185, 5 + 10 / 3, 0, 0.1 + 0.2 / 3), ("s", 2, 243, 5 + 20 / 3, 0, 0.1 + 0.4 / 3),
        ("l", 1, 212, 5 + 20 / 3, 0.4 / 3, 0.1 + 0.4 / 3),
    ],
)
def test_stage_params_table(variant, stage, size, randaug, mixup, dropout):
    p = stage_params(stage, 4, _spec(variant))
    assert p.image_size == size
    assert p.randaug_magnitude == pytest.approx(randaug)
    assert p.mixup_alpha == pytest.approx(mixup)
    assert p.dropout_rate == pytest.approx(dropout)


def test_rounding_to_multiple_of_8_keeps_last_stage_exact():
    sizes = [stage_params(i, 4, _spec("s", 8)).image_size for i in range(4)]
    assert sizes == [128, 184, 240, 300]


def test_single_stage_is_the_end_values():
    p = stage_params(0, 1, _spec("m"))
    assert (p.image_size, p.randaug_magnitude, p.mixup_alpha, p.dropout_rate) == (380, 20, 0.2, 0.4)


@pytest.mark.parametrize("stage, stages", [(-1, 4), (4, 4), (0, 0)])
def test_bad_stage(stage, stages):
    with pytest.raises(ValueError):
        stage_params(stage, stages, _spec("s"))


@pytest.mark.parametrize(
    "epochs, stages, expected",
    [(350, 4, [(0, 87), (87, 174), (174, 262), (262, 350)]),  # 87, 87, 88, 88
     (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
     (10, 4, [(0, 2), (2, 4), (4, 7), (7, 10)]),
     (5, 1, [(0, 5)])],
)
def test_stage_epochs_remainder_goes_to_last_stages(epochs, stages, expected):
    assert stage_epochs(epochs, stages) == expected
    assert schedules.stage_of_epoch(expected[-1][0], epochs, stages) == stages - 1
    starts = [e for e in range(epochs) if schedules.starts_stage(e, epochs, stages)]
    assert starts == [start for start, _ in expected]


def test_stage_epochs_refuses_more_stages_than_epochs():
    with pytest.raises(ValueError, match="cannot split 3 epochs into 4 stages"):
        stage_epochs(3, 4)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (50, 0.256 * 0.5 / 5),              # warmup: linear from 0
        (500, 0.256),                        # end of warmup
        (500 + 240 - 1, 0.256),              # staircase: the first decay at 2.4 epochs after warmup
        (500 + 240, 0.256 * 0.97),
        (500 + 2400, 0.256 * 0.97 ** 10),
    ],
)
def test_exponential_learning_rate_table(step, expected):
    kwargs = dict(steps_per_epoch=100, peak=0.256, warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4)
    assert float(schedules.LearningRateSchedule(**kwargs)(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    "step, expected",
    [
        (5, 0.5),                                                   # warmup
        (10, 1.0),                                                  # peak at the end of warmup
        (60, 0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 0.5))),    # half way down the cosine
        (110, 0.01),                                                # the end: the minimum
        (200, 0.01),                                                # and never below it
    ],
)
def test_cosine_learning_rate_table(step, expected):
    kwargs = dict(steps_per_epoch=10, peak=1.0, warmup_epochs=1, schedule="cosine", total_epochs=11, minimum=0.01)
    assert float(schedules.LearningRateSchedule(**kwargs)(step)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "step, expected",
    [
        (5, 0.5),                                                   # warmup as without a hold
        (10, 1.0),                                                  # peak at the end of warmup
        (70, 1.0),                                                  # held: 60% of the 10 epochs after warmup
        (80, 0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 0.25))),   # a quarter of the way down the cosine
        (90, 0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 0.5))),    # half way down
        (110, 0.01),                                                # the end: the minimum
    ],
)
def test_cosine_holds_the_peak_for_hold_fraction_then_decays_over_the_rest(step, expected):
    kwargs = dict(steps_per_epoch=10, peak=1.0, warmup_epochs=1, schedule="cosine", total_epochs=11, minimum=0.01)
    held = schedules.LearningRateSchedule(hold_fraction=0.6, **kwargs)
    assert float(held(step)) == pytest.approx(expected, rel=1e-5)
    again = schedules.LearningRateSchedule.from_config(held.get_config())
    assert float(again(80)) == float(held(80))
    with pytest.raises(ValueError, match="hold_fraction 1.0"):
        schedules.LearningRateSchedule(hold_fraction=1.0, **kwargs)


def test_schedule_serializes():
    s = schedules.LearningRateSchedule(steps_per_epoch=7, peak=0.1, schedule="cosine")
    again = schedules.LearningRateSchedule.from_config(s.get_config())
    assert again.get_config() == s.get_config()
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        schedules.LearningRateSchedule(steps_per_epoch=7, peak=0.1, schedule="linear")


@pytest.mark.parametrize(
    "size, final, batch, scaling, cap, multiple, expected",
    [
        (56, 128, 64, "none", None, 8, 64),        # off: the configured batch
        (56, 128, 64, "pixels", None, 8, 328),     # 64 * (128/56)^2 = 334.4 -> down to a multiple of 8
        (80, 128, 64, "pixels", None, 8, 160),     # 163.8
        (104, 128, 64, "pixels", None, 8, 96),     # 96.9
        (128, 128, 64, "pixels", None, 8, 64),     # the last stage: the configured batch
        (56, 128, 64, "pixels", 256, 8, 256),      # capped
        (56, 128, 64, "pixels", 250, 8, 248),      # capped, then rounded down
        (56, 128, 72, "pixels", None, 24, 360),    # 376.2 -> a multiple of lcm(8, 3 replicas)
        (120, 128, 12, "pixels", None, 8, 12),     # 13.7 rounds to 8: never below the configured 12
    ],
)
def test_stage_batch_size_table(size, final, batch, scaling, cap, multiple, expected):
    assert schedules.stage_batch_size(size, final, batch, scaling, cap, multiple) == expected


def test_learning_rate_follows_the_batch_by_the_optimizers_rule():
    assert schedules.learning_rate_scale(256, 64, "linear") == 4.0
    assert schedules.learning_rate_scale(256, 64, "sqrt") == 2.0
    assert schedules.LR_BATCH_RULES == {"sgd": "linear", "rmsprop": "linear", "adamw": "sqrt"}
    with pytest.raises(ValueError, match="unknown learning-rate batch rule 'cube'"):
        schedules.learning_rate_scale(256, 64, "cube")
    with pytest.raises(ValueError, match="unknown batch scaling 'area'"):
        schedules.stage_batch_size(56, 128, 64, "area")


def test_stage_params_carry_the_stage_batch_and_learning_rate_scale():
    spec = ProgressiveSpec(image_size=(56, 128), randaug_magnitude=(2, 10), mixup_alpha=(0, 0), dropout_rate=(0.1, 0.3),
                           batch_size=64, batch_scaling="pixels", lr_batch_rule="sqrt")
    stages = [stage_params(i, 4, spec) for i in range(4)]
    assert [s.image_size for s in stages] == [56, 80, 104, 128]
    assert [s.batch_size for s in stages] == [328, 160, 96, 64]
    assert [s.learning_rate_scale for s in stages] == pytest.approx([(328 / 64) ** 0.5, 2.5 ** 0.5, 1.5 ** 0.5, 1.0])
    off = ProgressiveSpec(image_size=(56, 128), randaug_magnitude=(2, 10), mixup_alpha=(0, 0), dropout_rate=(0.1, 0.3),
                          batch_size=64)
    assert {(stage_params(i, 4, off).batch_size, stage_params(i, 4, off).learning_rate_scale) for i in range(4)} == {
        (64, 1.0)}


def test_segments_merge_stages_of_one_batch_and_map_steps_to_epochs_piecewise():
    segments = schedules.step_segments([(0, 2), (2, 4), (4, 7), (7, 10)], [10, 10, 5, 3], [2.0, 2.0, 1.0, 1.0])
    assert segments == ((4, 10, 2.0), (3, 5, 1.0), (3, 3, 1.0))
    # 40 steps of 10 per epoch, then 15 of 5, then 3 per epoch.
    for step, epoch in [(0, 0.0), (25, 2.5), (40, 4.0), (45, 5.0), (55, 7.0), (56, 7 + 1 / 3), (64, 10.0), (67, 11.0)]:
        assert schedules.epoch_at_step(step, segments) == pytest.approx(epoch)
    assert schedules.step_segments([(0, 3), (3, 6)], [7, 7], [1.0, 1.0]) == ((6, 7, 1.0),)


@pytest.mark.parametrize("step", [0, 5, 20, 39, 40, 44, 45, 54, 55, 56, 64, 80])
def test_schedule_over_segments_is_the_epoch_schedule_times_the_segments_scale(step):
    segments = ((4, 10, 2.0), (3, 5, 1.0), (3, 3, 1.0))
    kwargs = dict(peak=1.0, warmup_epochs=1, schedule="cosine", total_epochs=10, minimum=0.01)
    epoch = schedules.epoch_at_step(step, segments)
    scale = 2.0 if step < 40 else 1.0
    # The same schedule on a plain epoch axis (3000 steps per epoch: every epoch here lands on a step).
    plain = schedules.LearningRateSchedule(steps_per_epoch=3000, **kwargs)
    expected = float(plain(round(epoch * 3000))) * scale
    assert float(schedules.LearningRateSchedule(segments=segments, **kwargs)(step)) == pytest.approx(expected, rel=1e-5)


def test_one_segment_is_bit_identical_to_steps_per_epoch():
    kwargs = dict(peak=0.256, warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4, total_epochs=350)
    plain = schedules.LearningRateSchedule(steps_per_epoch=312, **kwargs)
    one = schedules.LearningRateSchedule(segments=((350, 312, 1.0),), **kwargs)
    steps = [0, 1, 311, 312, 1559, 1560, 1561, 2308, 2309, 50_000, 109_199]
    assert [float(plain(s)) for s in steps] == [float(one(s)) for s in steps]


def test_schedule_with_segments_serializes_and_refuses_both_or_neither():
    s = schedules.LearningRateSchedule(segments=((2, 10, 4.0), (3, 5, 1.0)), peak=0.1, schedule="cosine")
    again = schedules.LearningRateSchedule.from_config(s.get_config())
    assert again.get_config() == s.get_config() and float(again(12)) == float(s(12))
    with pytest.raises(ValueError, match="exactly one"):
        schedules.LearningRateSchedule(steps_per_epoch=10, segments=((2, 10, 1.0),), peak=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        schedules.LearningRateSchedule(peak=0.1)
