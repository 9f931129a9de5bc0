"""Block strings of the reference release: one decoder, one encoder.

A block string describes one stage of the network, e.g. ``r4_k3_s2_e4_i24_o48_c1``:

=========  ==========================================================
``r<int>``  repeats (number of blocks in the stage)
``k<int>``  kernel size of the depthwise (MBConv) or full (Fused) conv
``s<int>``  stride of the first block of the stage
``e<num>``  expansion ratio
``i<int>``  input filters of the stage (before width scaling)
``o<int>``  output filters of the stage (before width scaling)
``se<num>`` squeeze-and-excitation ratio (optional; absent means none)
``c<int>``  conv type: ``c1`` = Fused-MBConv, ``c0`` or absent = MBConv
=========  ==========================================================

``decode`` and ``encode`` are inverses: ``decode(encode(args)) == args`` for every
valid ``BlockArgs``, and ``encode(decode(s))`` is the canonical form of ``s``.
"""

import dataclasses
import math
import re

import numpy as np

__all__ = ["BlockArgs", "BlockStringError", "decode", "decode_all", "encode"]


class BlockStringError(ValueError):
    """A block string that cannot be decoded, or block arguments that cannot be encoded."""


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """The arguments of one stage of blocks (see the module docstring)."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: float
    in_filters: int
    out_filters: int
    se_ratio: float = 0.0
    fused: bool = False

    def __post_init__(self):
        for name in ("repeats", "kernel_size", "strides", "in_filters", "out_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BlockStringError(f"{name} must be a positive integer, got {value!r}")
        if not _is_number(self.expand_ratio) or not self.expand_ratio >= 1:
            raise BlockStringError(f"expand_ratio must be a number >= 1, got {self.expand_ratio!r}")
        if not _is_number(self.se_ratio) or not 0 <= self.se_ratio <= 1:
            raise BlockStringError(f"se_ratio must be a number in [0, 1], got {self.se_ratio!r}")

    def scaled(self, width: float = 1.0, depth: float = 1.0, divisor: int = 8) -> "BlockArgs":
        """The stage after width and depth scaling (PAPER.md section 2 rounding rules)."""
        return dataclasses.replace(
            self,
            repeats=round_repeats(self.repeats, depth),
            in_filters=round_filters(self.in_filters, width, divisor),
            out_filters=round_filters(self.out_filters, width, divisor),
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Filters scaled by ``width``, rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return int(max(divisor, int(filters * width + divisor / 2) // divisor * divisor))


def round_repeats(repeats: int, depth: float) -> int:
    """Repeats scaled by ``depth``, rounded up."""
    return int(math.ceil(depth * repeats))


# Key -> (parser, BlockArgs field). Order here is the canonical encoding order.
_INT = r"\d+"
_NUM = r"\d+(?:\.\d+)?"
_KEYS = {
    "r": (_INT, "repeats"),
    "k": (_INT, "kernel_size"),
    "s": (_INT, "strides"),
    "e": (_NUM, "expand_ratio"),
    "i": (_INT, "in_filters"),
    "o": (_INT, "out_filters"),
    "se": (_NUM, "se_ratio"),
    "c": (r"[01]", "fused"),
}
_REQUIRED = ("r", "k", "s", "e", "i", "o")
_TOKEN = re.compile(r"^(se|[rkseioc])(.+)$")


def decode(block_string: str) -> BlockArgs:
    """Decodes one block string such as ``"r2_k3_s1_e1_i24_o24_c1"`` into ``BlockArgs``."""
    if not isinstance(block_string, str):
        raise BlockStringError(f"block string must be a str, got {type(block_string).__name__}")
    text = block_string.strip()
    if not text:
        raise BlockStringError("empty block string")
    fields = {}
    for token in text.split("_"):
        match = _TOKEN.match(token)
        if not match:
            raise BlockStringError(
                f"unknown key in token {token!r} of block string {block_string!r}; "
                f"expected one of {sorted(_KEYS)}"
            )
        key, value = match.groups()
        pattern, field = _KEYS[key]
        if not re.fullmatch(pattern, value):
            raise BlockStringError(
                f"bad value {value!r} for key {key!r} in block string {block_string!r}"
            )
        if field in fields:
            raise BlockStringError(f"key {key!r} given twice in block string {block_string!r}")
        if field == "fused":
            fields[field] = value == "1"
        elif pattern == _INT:
            fields[field] = int(value)
        else:
            number = float(value)
            fields[field] = int(number) if field == "expand_ratio" and number.is_integer() else number
    missing = [k for k in _REQUIRED if _KEYS[k][1] not in fields]
    if missing:
        raise BlockStringError(f"block string {block_string!r} is missing keys {missing}")
    try:
        return BlockArgs(**fields)
    except BlockStringError as e:
        raise BlockStringError(f"block string {block_string!r}: {e}") from None


def decode_all(block_strings) -> list:
    """Decodes a list of block strings, or one comma-separated string."""
    if isinstance(block_strings, str):
        block_strings = [s for s in block_strings.split(",") if s.strip()]
    return [decode(s) for s in block_strings]


def _format_number(value: float) -> str:
    # Positional notation ("0.00001", never "1e-05"): the decoder accepts only digits and a dot.
    return str(int(value)) if float(value).is_integer() else np.format_float_positional(float(value))


def encode(args: BlockArgs) -> str:
    """Encodes ``BlockArgs`` into its canonical block string."""
    if not isinstance(args, BlockArgs):
        raise BlockStringError(f"expected BlockArgs, got {type(args).__name__}")
    parts = [
        f"r{args.repeats}",
        f"k{args.kernel_size}",
        f"s{args.strides}",
        f"e{_format_number(args.expand_ratio)}",
        f"i{args.in_filters}",
        f"o{args.out_filters}",
    ]
    if args.se_ratio:
        parts.append(f"se{_format_number(args.se_ratio)}")
    if args.fused:
        parts.append("c1")
    return "_".join(parts)
