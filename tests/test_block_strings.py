import pytest
from hypothesis import given, settings, strategies as st

from efficientnetv2.block_strings import (
    BlockArgs,
    BlockStringError,
    decode,
    decode_all,
    encode,
    round_filters,
    round_repeats,
)
from efficientnetv2.variants import VARIANTS

VALID = [
    ("r2_k3_s1_e1_i24_o24_c1", BlockArgs(2, 3, 1, 1, 24, 24, 0.0, True)),
    ("r4_k3_s2_e4_i24_o48_c1", BlockArgs(4, 3, 2, 4, 24, 48, 0.0, True)),
    ("r15_k3_s2_e6_i160_o256_se0.25", BlockArgs(15, 3, 2, 6, 160, 256, 0.25, False)),
    ("r1_k5_s1_e1.5_i8_o8_se1_c0", BlockArgs(1, 5, 1, 1.5, 8, 8, 1.0, False)),
    # Order of keys does not matter; whitespace around the string is ignored.
    (" o48_i24_e4_s2_k3_r4_c1 ", BlockArgs(4, 3, 2, 4, 24, 48, 0.0, True)),
]


@pytest.mark.parametrize("text, expected", VALID)
def test_decode(text, expected):
    assert decode(text) == expected


@pytest.mark.parametrize(
    "args, text",
    [
        (BlockArgs(2, 3, 1, 1, 24, 24, 0.0, True), "r2_k3_s1_e1_i24_o24_c1"),
        (BlockArgs(15, 3, 2, 6, 160, 256, 0.25, False), "r15_k3_s2_e6_i160_o256_se0.25"),
        (BlockArgs(1, 3, 1, 1.5, 8, 8, 0.00001, False), "r1_k3_s1_e1.5_i8_o8_se0.00001"),
    ],
)
def test_encode(args, text):
    assert encode(args) == text


@pytest.mark.parametrize("text", [s for spec in VARIANTS.values() for s in spec.blocks])
def test_every_variant_string_round_trips_exactly(text):
    assert encode(decode(text)) == text


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("r2_k3_s1_e1_i24", "missing keys \\['o'\\]"),
        ("r2_k3_s1_e1_i24_o24_x9", "unknown key in token 'x9'"),
        ("r2_k3_s1_e1_i24_o24_c2", "bad value '2' for key 'c'"),
        ("r2_k3_s1_e1_i24_o24_r3", "given twice"),
        ("r0_k3_s1_e1_i24_o24", "repeats must be a positive integer"),
        ("r1_k3_s1_e0.5_i24_o24", "expand_ratio must be a number >= 1"),
        ("r1_k3_s1_e1_i24_o24_se1.5", "se_ratio must be a number in \\[0, 1\\]"),
        ("r1_k3_s1_e1_i24_o24__", "unknown key in token ''"),
        ("r-1_k3_s1_e1_i24_o24", "bad value '-1' for key 'r'"),
    ],
)
def test_malformed_strings_fail_clearly(text, message):
    with pytest.raises(BlockStringError, match=message):
        decode(text)


def test_block_string_error_is_a_value_error():
    assert issubclass(BlockStringError, ValueError)
    with pytest.raises(BlockStringError, match="must be a str"):
        decode(3)
    with pytest.raises(BlockStringError, match="expected BlockArgs"):
        encode("r1_k3_s1_e1_i8_o8")


def test_decode_all_accepts_list_or_comma_separated():
    s = "r1_k3_s1_e1_i8_o8_c1, r2_k3_s2_e4_i8_o16_se0.25"
    assert decode_all(s) == decode_all(s.split(","))
    assert [a.repeats for a in decode_all(s)] == [1, 2]


@pytest.mark.parametrize(
    "filters, width, expected",
    # PAPER.md section 2: max(8, int(f * w + 4) // 8 * 8).
    [(32, 1.0, 32), (16, 1.1, 16), (32, 1.1, 32), (48, 1.2, 56), (1280, 1.1, 1408), (1280, 1.2, 1536),
     (3, 1.0, 8), (112, 1.2, 136)],
)
def test_round_filters(filters, width, expected):
    assert round_filters(filters, width) == expected


@pytest.mark.parametrize("repeats, depth, expected", [(1, 1.1, 2), (2, 1.2, 3), (8, 1.4, 12), (15, 1.0, 15)])
def test_round_repeats(repeats, depth, expected):
    assert round_repeats(repeats, depth) == expected


def test_scaled_applies_width_and_depth():
    args = decode("r3_k3_s2_e4_i48_o96_se0.25").scaled(width=1.2, depth=1.4)
    assert (args.repeats, args.in_filters, args.out_filters) == (5, 56, 112)


_args = st.builds(
    BlockArgs,
    repeats=st.integers(1, 64),
    kernel_size=st.integers(1, 9),
    strides=st.integers(1, 4),
    expand_ratio=st.one_of(st.integers(1, 8), st.floats(1, 8, allow_nan=False)),
    in_filters=st.integers(1, 4096),
    out_filters=st.integers(1, 4096),
    se_ratio=st.one_of(st.just(0.0), st.floats(0, 1, allow_nan=False)),
    fused=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(_args)
def test_property_round_trip(args):
    decoded = decode(encode(args))
    assert decoded == args
    assert encode(decoded) == encode(args)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="rkseioc0123456789._-_ ", max_size=40) | st.text(max_size=30))
def test_property_any_text_decodes_or_raises_block_string_error(text):
    try:
        args = decode(text)
    except BlockStringError:
        return
    assert isinstance(args, BlockArgs)
    assert decode(encode(args)) == args
