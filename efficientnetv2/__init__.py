"""EfficientNetV2 (Tan & Le, ICML 2021) as Keras 3 layers and models."""

from efficientnetv2.block_strings import BlockArgs, BlockStringError, decode, encode
from efficientnetv2.blocks import FusedMBConv, MBConv, SqueezeExcite, StochasticDepth
from efficientnetv2.model import FEATURE_LEVELS, build_model, set_dropout_rate
from efficientnetv2.variants import VARIANTS, VariantSpec, get_variant, variant_names

__version__ = "0.1.0"
