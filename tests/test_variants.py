import dataclasses

import pytest

from efficientnetv2.variants import VARIANTS, Range, VariantSpec, get_variant, variant_names


@pytest.mark.parametrize("name", ["s", "S", "efficientnetv2-s", "EfficientNetV2-S", "efficientnetv2_s"])
def test_names_accepted(name):
    assert get_variant(name).name == "s"


def test_spec_passes_through():
    spec = VARIANTS["m"]
    assert get_variant(spec) is spec


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown EfficientNetV2 variant 'q'.*\['b0', 'b1', 'b2', 'b3', 'l', 'm', 's', 'xl'\]"):
        get_variant("q")


def test_all_eight_variants():
    assert variant_names() == ["b0", "b1", "b2", "b3", "l", "m", "s", "xl"]
    assert all(isinstance(v, VariantSpec) for v in VARIANTS.values())


@pytest.mark.parametrize(
    "name, width, depth, train, evaluate",
    [("b0", 1.0, 1.0, 192, 224), ("b1", 1.0, 1.1, 192, 240), ("b2", 1.1, 1.2, 208, 260),
     ("b3", 1.2, 1.4, 240, 300), ("s", 1.0, 1.0, 300, 384), ("m", 1.0, 1.0, 380, 480),
     ("l", 1.0, 1.0, 380, 480)],
)
def test_sizes_and_multipliers_from_the_paper(name, width, depth, train, evaluate):
    spec = get_variant(name)
    assert (spec.width, spec.depth, spec.image_size.end, spec.eval_size) == (width, depth, train, evaluate)


@pytest.mark.parametrize(
    "name, size, randaug, mixup, dropout",
    # PAPER.md section 1, the paper's progressive settings (min -> max).
    [("s", (128, 300), (5, 15), (0, 0), (0.1, 0.3)),
     ("m", (128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
     ("l", (128, 380), (5, 25), (0, 0.4), (0.1, 0.5))],
)
def test_progressive_ranges_from_the_paper(name, size, randaug, mixup, dropout):
    spec = get_variant(name)
    assert (spec.image_size.start, spec.image_size.end) == size
    assert (spec.randaug_magnitude.start, spec.randaug_magnitude.end) == randaug
    assert (spec.mixup_alpha.start, spec.mixup_alpha.end) == mixup
    assert (spec.dropout.start, spec.dropout.end) == dropout


@pytest.mark.parametrize(
    "name, dropout",
    # The head dropout of keras.applications' EfficientNetV2 B0-B3 (and the reference release).
    [("b0", 0.2), ("b1", 0.2), ("b2", 0.3), ("b3", 0.3)],
)
def test_b_variants_end_at_the_reference_head_dropout(name, dropout):
    assert get_variant(name).dropout == Range(0.1, dropout)


def test_one_field_per_meaning():
    # The training size and head dropout are the progressive ranges' ends, held nowhere else.
    fields = {f.name for f in dataclasses.fields(VariantSpec)}
    assert not fields & {"train_size", "dropout_rate"}
    for spec in VARIANTS.values():
        assert spec.eval_size >= spec.image_size.end
