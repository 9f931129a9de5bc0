"""The typed configuration tree and the one place that merges it.

Order of precedence (later wins): the defaults below (the paper's ImageNet recipe, PAPER.md section 1)
-> the dataset's named file (``hparams/<dataset>.yaml``) -> a user file (``--hparams_file``) ->
command-line overrides (``--hparams="train.epochs=30,train.batch_size=64"``). Files hold only what
differs from what comes before them. Every key is checked: an unknown key or a value of the wrong
type is refused with ``ConfigError`` naming the key, the value and the nearest valid keys, before any
work starts. ``validate`` then checks the rules between values (sizes, epochs, batch).

Sizes are pixels, epochs are epochs, batch sizes are global (all replicas together).

Why a typed tree of dataclasses and not ``ml_collections.ConfigDict`` (which has locked dotted
overrides and ``config_flags``): the fields here carry their types, and ``Optional[int]`` and the
choices of ``CHOICES`` are checked when a value is set, from a file or the command line alike, with
the nearest valid key named; a ConfigDict infers a field's type from its default, so an optional
size (``None`` by default) would take any type. Earlier versions' keys are translated or refused
with their replacement (``REMOVED_KEYS``), and ``diff`` compares a resumed run's saved config with
the command's. It costs about 200 lines and no dependency.
"""

import dataclasses
import difflib
import math
import os
import re
import types
import typing

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "ProgressiveConfig",
    "EvalConfig",
    "load_config",
    "load_command_config",
    "parse_overrides",
    "apply_overrides",
    "validate",
    "to_dict",
    "dump",
    "named_config_path",
]

HPARAMS_DIR = os.path.dirname(os.path.abspath(__file__))


# Larger images are a typo (a size of 100000 px would exhaust memory long after the run started).
MAX_IMAGE_SIZE = 1024


class ConfigError(ValueError):
    """A configuration key, value or combination that cannot be used."""


@dataclasses.dataclass
class ModelConfig:
    variant: str = "s"
    # Overrides of the variant's architecture (None keeps the variant's), e.g. for tiny models.
    width: typing.Optional[float] = None
    depth: typing.Optional[float] = None
    blocks: typing.Optional[str] = None
    head_filters: int = 1280
    drop_path_rate: float = 0.2
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    synchronized_bn: bool = False


@dataclasses.dataclass
class DataConfig:
    # "auto" picks "synthetic" without a data_dir, else detects the format; see datasets.get_source.
    dataset: str = "auto"
    data_dir: typing.Optional[str] = None
    randaug_num_layers: int = 2
    # Multiplies RandAugment's two pixel-valued ops (translate, cutout; datasets/randaugment.py): 1
    # is the reference's units, set for the paper's 128-380 px; k for a run at k x those sizes.
    randaug_pixel_scale: float = 1.0
    cutmix_alpha: float = 0.0
    # "grpc://HOST:PORT" of a tf.data service dispatcher: the training pipeline runs on its workers
    # (datasets/service.py); "" preprocesses on this host.
    service_address: str = ""
    # > 0: evaluate on this many training records held out (never trained on) instead of the
    # validation shards, the paper's ImageNet-21k split (datasets/holdout.py); TFRecord data only.
    holdout_examples: int = 0


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 350
    batch_size: int = 4096
    # None: the dataset's size // batch_size.
    steps_per_epoch: typing.Optional[int] = None
    optimizer: str = "rmsprop"
    rmsprop_rho: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3
    # Peak learning rate = lr_base * batch_size / lr_base_batch_size (linear scaling).
    lr_base: float = 0.256
    lr_base_batch_size: int = 4096
    lr_schedule: str = "exponential"
    warmup_epochs: float = 5.0
    lr_decay_rate: float = 0.97
    lr_decay_epochs: float = 2.4
    lr_min: float = 0.0
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    # "softmax" cross-entropy (multi-label targets normalized to sum to 1, the paper's ImageNet-21k
    # loss), or "sigmoid" (one binary cross-entropy per class).
    loss: str = "softmax"
    # EMA of the weights used for evaluation and export; 0 disables it.
    ema_decay: float = 0.9999
    # "auto": mixed_bfloat16 on TPU, mixed_float16 on GPU, float32 on CPU.
    mixed_precision: str = "auto"
    # "auto": XLA on TPU and GPU; off on CPU (see README for the measurement).
    jit_compile: str = "auto"
    # Train steps per host round trip (``model.compile(steps_per_execution=...)``): an integer >= 1, or
    # "auto": min(100, the fewest steps of a stage's epoch) on TPU, 1 on CPU and GPU. SIGTERM, a NaN
    # stop and the progress bar act at the end of an execution (README, beside the strategies).
    steps_per_execution: str = "auto"
    seed: int = 0
    deterministic: bool = False
    keep_checkpoints: int = 3
    init_checkpoint: str = ""
    # Largest total size an init_checkpoint archive (.tar/.tgz/.zip) may unpack to, in MiB.
    max_archive_mb: int = 4096
    # Augmented training images written to TensorBoard (logs/stage_images) at the start of each
    # progressive stage; 0 writes none.
    log_stage_images: int = 4


@dataclasses.dataclass
class ProgressiveConfig:
    """Progressive learning (PAPER.md section 1); None takes the variant's range end.

    Every run is progressive: ``num_stages = 1`` trains one stage at the ``*_end`` values (image size,
    RandAugment magnitude, mixup alpha, dropout), which is training without progressive learning.
    """

    num_stages: int = 4
    image_size_start: typing.Optional[int] = None
    image_size_end: typing.Optional[int] = None
    randaug_start: typing.Optional[float] = None
    randaug_end: typing.Optional[float] = None
    mixup_start: typing.Optional[float] = None
    mixup_end: typing.Optional[float] = None
    dropout_start: typing.Optional[float] = None
    dropout_end: typing.Optional[float] = None
    # Round stage image sizes to a multiple of this (0: no rounding); the last stage is exact.
    round_image_size_to: int = 8
    # Per-stage global batch: "none" trains every stage at train.batch_size; "pixels" gives a stage at
    # size S the batch train.batch_size * (S_e / S)^2 (as many pixels per step as the last stage),
    # capped at max_batch_size (None: no cap), rounded down to a multiple of 8 and of the replica
    # count, never below train.batch_size; its learning rate and steps per epoch follow the batch.
    batch_scaling: str = "none"
    max_batch_size: typing.Optional[int] = None
    # How a scaled stage's learning rate follows its batch: "linear" (lr ~ batch), "sqrt"
    # (lr ~ sqrt(batch)), or "auto": the optimizer's rule (efficientnetv2/train/schedules.LR_BATCH_RULES).
    lr_batch_rule: str = "auto"


@dataclasses.dataclass
class EvalConfig:
    # None: the variant's evaluation size.
    image_size: typing.Optional[int] = None
    batch_size: int = 64
    # None: the whole evaluation split.
    steps: typing.Optional[int] = None
    # Largest image file --mode=predict reads, in MiB (larger files are refused, not read).
    max_image_mb: int = 64


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    progressive: ProgressiveConfig = dataclasses.field(default_factory=ProgressiveConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


CHOICES = {
    "train.optimizer": ("rmsprop", "sgd", "adamw"),
    "train.lr_schedule": ("exponential", "cosine", "constant"),
    "train.loss": ("softmax", "sigmoid"),
    "train.mixed_precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.jit_compile": ("auto", "true", "false"),
    "progressive.batch_scaling": ("none", "pixels"),
    "progressive.lr_batch_rule": ("auto", "linear", "sqrt"),
}
# String keys that hold "auto" or a count (stored as its decimal string).
AUTO_OR_COUNT = ("train.steps_per_execution",)


def _all_keys(node=None, prefix=""):
    node = node if node is not None else Config()
    keys = []
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


# Keys of earlier versions: what replaces each. A user's file or override naming one is refused with
# the replacement; a run's own saved config.yaml is translated (``_migrate``).
REMOVED_KEYS = {
    "progressive.enabled": "progressive.num_stages=1 trains one stage at the progressive.*_end values",
    "train.image_size": "progressive.image_size_end (with progressive.num_stages=1 for a fixed size)",
    "data.randaug_magnitude": "progressive.randaug_end (with progressive.num_stages=1 for a fixed magnitude)",
    "data.mixup_alpha": "progressive.mixup_end (with progressive.num_stages=1 for a fixed alpha)",
    "model.dropout_rate": "progressive.dropout_end (with progressive.num_stages=1 for a fixed rate)",
    "train.stop_on_nan": "nothing: a NaN or Inf loss always stops the run, keeping the last good checkpoint",
}


def _unknown_key(key, valid):
    if key in REMOVED_KEYS:
        return ConfigError(f"config key {key!r} was removed; use {REMOVED_KEYS[key]}")
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} (valid keys: see hparams/config.py)")


def _coerce(key, value, annotation):
    """``value`` converted to the field's type, or ConfigError naming key and value."""
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )
    base = [a for a in typing.get_args(annotation) if a is not type(None)][0] if optional else annotation
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"config key {key!r} may not be None")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif base is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key {key!r} got {value!r}; expected a finite number")
            return number
    elif base is str:
        if isinstance(value, bool):
            value = str(value).lower()
        if isinstance(value, (str, int, float)):
            value = str(value).strip()
            if key in AUTO_OR_COUNT:
                if value.lower() != "auto" and not (value.isdigit() and int(value) >= 1):
                    raise ConfigError(f"config key {key!r} got {value!r}; expected 'auto' or an integer >= 1")
                return value.lower() if value.lower() == "auto" else str(int(value))
            choices = CHOICES.get(key)
            if choices and value.lower() not in choices:
                raise ConfigError(f"config key {key!r} got {value!r}; expected one of {list(choices)}")
            return value.lower() if choices else value
    raise ConfigError(
        f"config key {key!r} expects {getattr(base, '__name__', base)}"
        f"{' or None' if optional else ''}, got {value!r} ({type(value).__name__})"
    )


def _set(config, key, value):
    valid = _all_keys()
    if key not in valid:
        raise _unknown_key(key, valid)
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = getattr(node, part)
    hints = typing.get_type_hints(type(node))
    setattr(node, leaf, _coerce(key, value, hints[leaf]))


def _flatten(tree, prefix="", source="config"):
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    flat = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{key}.", source))
        else:
            flat[key] = value
    return flat


def apply_mapping(config, tree, source="config"):
    """Applies a nested mapping (a parsed YAML file) onto ``config``; every key is checked."""
    for key, value in _flatten(tree or {}, source=source).items():
        try:
            _set(config, key, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return config


def read_yaml(path):
    """A YAML file read with the safe loader (no Python objects can be constructed)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None


def _split_top_level(text):
    """Splits on commas outside quotes and brackets."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0 and not quote:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _unwrap(value):
    """``'a,b'``, ``"a,b"`` or ``[a,b]`` -> ``a,b`` (a value holding commas, e.g. block strings)."""
    if len(value) >= 2 and (value[0], value[-1]) in (("'", "'"), ('"', '"'), ("[", "]")):
        return value[1:-1].strip()
    return value


def parse_overrides(text):
    """``"a.b=1, c.d='x,y'"`` -> ``{"a.b": "1", "c.d": "x,y"}`` (values are typed later, per key).

    Commas separate overrides; a value that holds commas is quoted or bracketed.
    """
    if not isinstance(text, str):
        raise ConfigError(f"overrides must be a str, got {type(text).__name__}")
    overrides = {}
    for item in _split_top_level(text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (quote values that hold commas)"
            )
        overrides[key] = _unwrap(value.strip())
    return overrides


def apply_overrides(config, overrides, source="--hparams"):
    if isinstance(overrides, str):
        overrides = parse_overrides(overrides)
    for key, value in overrides.items():
        try:
            _set(config, key, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return config


def named_config_path(name):
    return os.path.join(HPARAMS_DIR, f"{name}.yaml")


def dataset_config_name(dataset, data_dir):
    """The named file applied for a dataset (``hparams/<name>.yaml``), or None."""
    if dataset.startswith("tfds:"):
        name = dataset.split(":", 1)[1]
    elif dataset == "auto":
        name = "synthetic" if not data_dir else None
    else:
        name = dataset
    if name and os.path.isfile(named_config_path(name)):
        return name
    return None


def load_config(dataset="auto", data_dir=None, hparams_file=None, overrides="", model=None):
    """The merged config: defaults -> dataset file -> user file -> overrides (see module doc)."""
    config = Config()
    if model:
        config.model.variant = model
    config.data.dataset = dataset or "auto"
    config.data.data_dir = data_dir or None
    name = dataset_config_name(config.data.dataset, config.data.data_dir)
    if name:
        apply_mapping(config, read_yaml(named_config_path(name)), source=f"hparams/{name}.yaml")
    if hparams_file:
        apply_mapping(config, read_yaml(hparams_file), source=hparams_file)
    if overrides:
        apply_overrides(config, overrides)
    return config


def load_command_config(model_dir, use_saved, dataset="auto", data_dir=None, hparams_file=None, overrides="",
                        model=None):
    """The config of one command on ``model_dir``.

    With ``use_saved`` (evaluating, exporting or predicting with a finished run) and a saved
    ``model_dir/config.yaml``: the run's own config, with this command's ``data_dir`` and
    ``overrides`` on top. Otherwise (training, or a run without a saved config) ``load_config``.
    """
    saved = os.path.join(model_dir, "config.yaml")
    if use_saved and os.path.isfile(saved):
        config = from_dict(read_yaml(saved), source=saved)
        if data_dir:
            config.data.data_dir = data_dir
        if overrides:
            apply_overrides(config, overrides)
        return config
    return load_config(dataset=dataset, data_dir=data_dir, hparams_file=hparams_file, overrides=overrides,
                       model=model)


def to_dict(config):
    return dataclasses.asdict(config)


def dump(config):
    """The resolved config as YAML text (what is written to ``model_dir/config.yaml``)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _migrate(flat):
    """A saved config of an earlier version in today's keys: progressive learning switched off
    becomes one stage at the fixed values; ``train.image_size`` (which became the end size) and
    values that were never read are dropped."""
    flat = dict(flat)
    removed = {key: flat.pop(key) for key in REMOVED_KEYS if key in flat}
    if removed.get("train.image_size") is not None and flat.get("progressive.image_size_end") is None:
        flat["progressive.image_size_end"] = removed["train.image_size"]
    if removed.get("progressive.enabled") is False:
        flat["progressive.num_stages"] = 1
        for old, new in (("data.randaug_magnitude", "progressive.randaug_end"),
                         ("data.mixup_alpha", "progressive.mixup_end"),
                         ("model.dropout_rate", "progressive.dropout_end")):
            if removed.get(old) is not None:
                flat[new] = removed[old]
    return flat


def from_dict(tree, source="config"):
    """A config from a run's saved ``config.yaml`` (earlier versions' keys translated)."""
    return apply_mapping(Config(), _migrate(_flatten(tree or {}, source=source)), source=source)


def diff(a, b):
    """Keys whose values differ between two configs: ``{key: (a_value, b_value)}``."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _rule(key, value, rule):
    return ConfigError(f"config key {key!r} = {value!r}: {rule}")


def validate(config, num_replicas=1, last_train_size=None, eval_size=None, size_multiple=1):
    """Checks the rules between values; raises ConfigError naming the key, the value and the rule."""
    positive = {
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.lr_base_batch_size": config.train.lr_base_batch_size,
        "eval.batch_size": config.eval.batch_size,
        "progressive.num_stages": config.progressive.num_stages,
        "model.head_filters": config.model.head_filters,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "data.randaug_pixel_scale": config.data.randaug_pixel_scale,
    }
    optional_positive = {
        "train.steps_per_epoch": config.train.steps_per_epoch,
        "eval.image_size": config.eval.image_size,
        "eval.steps": config.eval.steps,
        "progressive.image_size_start": config.progressive.image_size_start,
        "progressive.image_size_end": config.progressive.image_size_end,
        "model.width": config.model.width,
        "model.depth": config.model.depth,
        "progressive.max_batch_size": config.progressive.max_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise _rule(key, value, "must be > 0")
    for key, value in optional_positive.items():
        if value is not None and value <= 0:
            raise _rule(key, value, "must be > 0 (or None for the default)")
    for key, value in {
        "train.lr_base": config.train.lr_base,
        "train.warmup_epochs": config.train.warmup_epochs,
        "train.weight_decay": config.train.weight_decay,
        "train.lr_min": config.train.lr_min,
        "data.cutmix_alpha": config.data.cutmix_alpha,
        "data.randaug_num_layers": config.data.randaug_num_layers,
        "progressive.round_image_size_to": config.progressive.round_image_size_to,
        "data.holdout_examples": config.data.holdout_examples,
        "train.log_stage_images": config.train.log_stage_images,
    }.items():
        if value < 0:
            raise _rule(key, value, "must be >= 0")
    for key, value in {
        "train.label_smoothing": config.train.label_smoothing,
        "train.ema_decay": config.train.ema_decay,
        "model.drop_path_rate": config.model.drop_path_rate,
        "model.bn_momentum": config.model.bn_momentum,
        "train.lr_decay_rate": config.train.lr_decay_rate,
    }.items():
        if not 0 <= value < 1 and not (key == "train.lr_decay_rate" and value == 1):
            raise _rule(key, value, "must be in [0, 1)")
    address = config.data.service_address
    if address and not re.fullmatch(r"grpc://[^:/\s]+:\d{1,5}", address):
        raise _rule("data.service_address", address, "must look like grpc://HOST:PORT (or be empty)")
    if config.train.lr_decay_epochs <= 0:
        raise _rule("train.lr_decay_epochs", config.train.lr_decay_epochs, "must be > 0")
    if config.train.batch_size % num_replicas:
        raise _rule(
            "train.batch_size",
            config.train.batch_size,
            f"must be divisible by the number of replicas ({num_replicas})",
        )
    max_batch = config.progressive.max_batch_size
    if max_batch is not None and max_batch < config.train.batch_size:
        raise _rule("progressive.max_batch_size", max_batch,
                    f"must be >= train.batch_size ({config.train.batch_size}): it caps the larger early-stage batches")
    if config.eval.batch_size % num_replicas:
        raise _rule(
            "eval.batch_size",
            config.eval.batch_size,
            f"must be divisible by the number of replicas ({num_replicas})",
        )
    sizes = {
        "eval.image_size": config.eval.image_size,
        "progressive.image_size_start": config.progressive.image_size_start,
        "progressive.image_size_end": config.progressive.image_size_end,
    }
    for key, value in sizes.items():
        if value is not None and value > MAX_IMAGE_SIZE:
            raise _rule(key, value, f"must be <= {MAX_IMAGE_SIZE} px (the paper's largest is 512)")
    start, end = config.progressive.image_size_start, config.progressive.image_size_end
    if start is not None and end is not None and start > end and config.progressive.num_stages > 1:
        raise _rule("progressive.image_size_start", start,
                    f"must be <= progressive.image_size_end ({end}): images grow over the stages")
    if last_train_size is not None and eval_size is not None and eval_size < last_train_size:
        raise _rule(
            "eval.image_size",
            eval_size,
            f"must be >= the last training image size ({last_train_size})",
        )
    if size_multiple > 1:
        for key, value in (("last training image size", last_train_size), ("eval.image_size", eval_size)):
            if value is not None and value % size_multiple:
                raise _rule(key, value, f"must be a multiple of {size_multiple} on this strategy")
    return config
