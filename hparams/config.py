"""The typed configuration tree and the one place that merges it.

Order of precedence (later wins): the defaults below (the paper's ImageNet recipe, PAPER.md section 1)
-> the dataset's named file (``hparams/<dataset>.yaml``) -> a user file (``--hparams_file``) ->
command-line overrides (``--hparams="train.epochs=30,train.batch_size=64"``). Files hold only what
differs from what comes before them. Each key's type, choices and range sit beside its field
(``setting``); every value set from a file or the command line is checked against them, and an
unknown key, a wrong type or a value out of range is refused with ``ConfigError`` naming the key, the
value and the rule (or the nearest valid keys) before any work starts. ``validate`` checks the same
rules on the whole tree, then the rules between values (sizes, batch and replicas).

Sizes are pixels, epochs are epochs, batch sizes are global (all replicas together).

Why not ``ml_collections.ConfigDict``: it has locked dotted overrides, typed placeholders
(``config_dict.placeholder(int)``) and ``config_flags``, but not what a run that lasts days needs
here: earlier versions' keys translated in a run's saved config or refused with their replacement
(``REMOVED_KEYS``), the diff between a resumed run's saved config and the command's (``diff``), and
YAML files that hold only what differs. With those, a dataclass tree costs no more and no dependency.
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
    "ExportConfig",
    "load_config",
    "load_command_config",
    "parse_overrides",
    "apply_overrides",
    "validate",
    "validate_sizes",
    "to_dict",
    "dump",
    "named_config_path",
]

HPARAMS_DIR = os.path.dirname(os.path.abspath(__file__))


# Upper bounds of sizes and counts. Each lies well above any published run and far below what ends in
# an allocator failure, or a build that runs for minutes and crashes: a value past one is a typo.
MAX_IMAGE_SIZE = 1024  # pixels; the paper's largest is 512.
MAX_BATCH_SIZE = 65536  # global; ImageNet on a whole TPU pod trains at 4096 to 65536.
MAX_MULTIPLIER = 8.0  # width and depth; EfficientNet-L2, the largest published, is 4.3 wide and 5.3 deep.
MAX_EPOCHS = 10_000  # the paper trains 350; a few thousand fine-tune a tiny dataset.
MAX_STEPS = 10_000_000  # per epoch or evaluation; ImageNet's 1.28M images at batch 1 are 1.28M steps.
MAX_RANDAUG_MAGNITUDE = 30.0  # datasets/randaugment.MAX_MAGNITUDE (this module imports no TensorFlow).


class ConfigError(ValueError):
    """A configuration key, value or combination that cannot be used."""


def _number(bound):
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a numeric key: each side closed (``at_least``, ``at_most``), open or absent."""

    at_least: typing.Optional[float] = None
    above: typing.Optional[float] = None
    at_most: typing.Optional[float] = None
    below: typing.Optional[float] = None

    def holds(self, value):
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below))

    def __str__(self):
        sides = ((">=", self.at_least), (">", self.above), ("<=", self.at_most), ("<", self.below))
        return " and ".join(f"{sign} {_number(bound)}" for sign, bound in sides if bound is not None)


def setting(default, *, choices=None, auto_or_count=False, **bounds):
    """A config field with its rules beside it: ``choices`` (a str key), ``auto_or_count`` (a str key
    holding "auto" or a count), and the numeric range (``Bounds``' keywords)."""
    metadata = {"choices": choices, "auto_or_count": auto_or_count, "bounds": Bounds(**bounds) if bounds else None}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class ModelConfig:
    variant: str = "s"
    # Overrides of the variant's architecture (None keeps the variant's), e.g. for tiny models.
    width: typing.Optional[float] = setting(None, above=0, at_most=MAX_MULTIPLIER)
    depth: typing.Optional[float] = setting(None, above=0, at_most=MAX_MULTIPLIER)
    blocks: typing.Optional[str] = None
    # Before width scaling; 16384 is twelve times the largest variant's.
    head_filters: int = setting(1280, at_least=1, at_most=16384)
    drop_path_rate: float = setting(0.2, at_least=0, below=1)
    bn_momentum: float = setting(0.99, at_least=0, below=1)
    bn_epsilon: float = setting(1e-3, above=0, at_most=1)
    synchronized_bn: bool = False
    # Residual blocks start as the identity (their last batch norm's scale at 0): faster from scratch.
    zero_init_residual: bool = False


@dataclasses.dataclass
class DataConfig:
    # "auto" picks "synthetic" without a data_dir, else detects the format; see datasets.get_source.
    dataset: str = "auto"
    data_dir: typing.Optional[str] = None
    # Ops are drawn with replacement, each a pass over the image: more than 16 only costs time.
    # The training crop's smallest share of the image's area (Inception-style random-resized crop:
    # 0.08 as the paper; short runs learn faster from larger crops, e.g. 0.35).
    crop_area_min: float = setting(0.08, above=0, at_most=1)
    randaug_num_layers: int = setting(2, at_least=0, at_most=16)
    # Multiplies RandAugment's two pixel-valued ops (translate, cutout; datasets/randaugment.py): 1
    # is the reference's units, set for the paper's 128-380 px; k for a run at k x those sizes.
    randaug_pixel_scale: float = setting(1.0, above=0, at_most=MAX_IMAGE_SIZE / 128)
    cutmix_alpha: float = setting(0.0, at_least=0)
    # "grpc://HOST:PORT" of a tf.data service dispatcher: the training pipeline runs on its workers
    # (datasets/service.py); "" preprocesses on this host.
    service_address: str = ""
    # > 0: evaluate on this many training records held out (never trained on) instead of the
    # validation shards, the paper's ImageNet-21k split (datasets/holdout.py); TFRecord data only.
    holdout_examples: int = setting(0, at_least=0)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = setting(350, at_least=1, at_most=MAX_EPOCHS)
    batch_size: int = setting(4096, at_least=1, at_most=MAX_BATCH_SIZE)
    # None: the dataset's size // batch_size.
    steps_per_epoch: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_STEPS)
    optimizer: str = setting("rmsprop", choices=("rmsprop", "sgd", "adamw"))
    rmsprop_rho: float = setting(0.9, at_least=0, below=1)
    momentum: float = setting(0.9, at_least=0, below=1)
    # The optimizer's denominator term: 0 divides by a vanishing second moment (a NaN loss).
    epsilon: float = setting(1e-3, above=0, at_most=1)
    # Peak learning rate = lr_base * batch_size / lr_base_batch_size (linear scaling).
    lr_base: float = setting(0.256, at_least=0)
    lr_base_batch_size: int = setting(4096, at_least=1, at_most=MAX_BATCH_SIZE)
    lr_schedule: str = setting("exponential", choices=("exponential", "cosine", "constant"))
    warmup_epochs: float = setting(5.0, at_least=0, at_most=MAX_EPOCHS)
    lr_decay_rate: float = setting(0.97, above=0, at_most=1)
    lr_decay_epochs: float = setting(2.4, above=0, at_most=MAX_EPOCHS)
    lr_min: float = setting(0.0, at_least=0)
    # Cosine only: the fraction of the epochs after warmup held at the peak before the cosine decay
    # over the rest ("flat then cosine"); 0 decays from the end of warmup.
    lr_hold_fraction: float = setting(0.0, at_least=0, below=1)
    weight_decay: float = setting(1e-5, at_least=0, below=1)
    # Which weights decay: "kernels" (conv, depthwise and dense kernels, as the reference release) or
    # "all" (batch norm's scale and offset and biases too, as Keras' AdamW by default).
    weight_decay_on: str = setting("kernels", choices=("kernels", "all"))
    label_smoothing: float = setting(0.1, at_least=0, below=1)
    # "softmax" cross-entropy (multi-label targets normalized to sum to 1, the paper's ImageNet-21k
    # loss), or "sigmoid" (one binary cross-entropy per class).
    loss: str = setting("softmax", choices=("softmax", "sigmoid"))
    # EMA of the weights used for evaluation and export; 0 disables it.
    ema_decay: float = setting(0.9999, at_least=0, below=1)
    # "auto": mixed_bfloat16 on TPU, mixed_float16 on GPU, float32 on CPU.
    mixed_precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))
    # "auto": XLA on TPU and GPU; off on CPU (see README for the measurement).
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))
    # Train steps per host round trip (``model.compile(steps_per_execution=...)``): an integer >= 1, or
    # "auto": min(100, the fewest steps of a stage's epoch) on TPU, 1 on CPU and GPU. SIGTERM, a NaN
    # stop and the progress bar act at the end of an execution (README, beside the strategies).
    steps_per_execution: str = setting("auto", auto_or_count=True, at_least=1, at_most=MAX_STEPS)
    # NumPy's seeds are unsigned 32-bit.
    seed: int = setting(0, at_least=0, at_most=2**32 - 1)
    deterministic: bool = False
    keep_checkpoints: int = setting(3, at_least=1)
    init_checkpoint: str = ""
    # Largest total size an init_checkpoint archive (.tar/.tgz/.zip) may unpack to, in MiB.
    max_archive_mb: int = setting(4096, at_least=1)
    # Augmented training images written to TensorBoard (logs/stage_images) at the start of each
    # progressive stage; 0 writes none. They are one batch of a pipeline of their own: a grid's worth.
    log_stage_images: int = setting(4, at_least=0, at_most=64)


@dataclasses.dataclass
class ProgressiveConfig:
    """Progressive learning (PAPER.md section 1); None takes the variant's range end.

    Every run is progressive: ``num_stages = 1`` trains one stage at the ``*_end`` values (image size,
    RandAugment magnitude, mixup alpha, dropout), which is training without progressive learning.
    """

    # Every stage trains at least an epoch.
    num_stages: int = setting(4, at_least=1, at_most=MAX_EPOCHS)
    image_size_start: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_IMAGE_SIZE)
    image_size_end: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_IMAGE_SIZE)
    randaug_start: typing.Optional[float] = setting(None, at_least=0, at_most=MAX_RANDAUG_MAGNITUDE)
    randaug_end: typing.Optional[float] = setting(None, at_least=0, at_most=MAX_RANDAUG_MAGNITUDE)
    mixup_start: typing.Optional[float] = setting(None, at_least=0)
    mixup_end: typing.Optional[float] = setting(None, at_least=0)
    dropout_start: typing.Optional[float] = setting(None, at_least=0, below=1)
    dropout_end: typing.Optional[float] = setting(None, at_least=0, below=1)
    # Round stage image sizes to a multiple of this (0: no rounding); the last stage is exact.
    round_image_size_to: int = setting(8, at_least=0, at_most=MAX_IMAGE_SIZE)
    # Per-stage global batch: "none" trains every stage at train.batch_size; "pixels" gives a stage at
    # size S the batch train.batch_size * (S_e / S)^2 (as many pixels per step as the last stage),
    # capped at max_batch_size (None: no cap), rounded down to a multiple of 8 and of the replica
    # count, never below train.batch_size; its learning rate and steps per epoch follow the batch.
    batch_scaling: str = setting("none", choices=("none", "pixels"))
    max_batch_size: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_BATCH_SIZE)
    # How a scaled stage's learning rate follows its batch: "linear" (lr ~ batch), "sqrt"
    # (lr ~ sqrt(batch)), or "auto": the optimizer's rule (efficientnetv2/train/schedules.LR_BATCH_RULES).
    lr_batch_rule: str = setting("auto", choices=("auto", "linear", "sqrt"))


@dataclasses.dataclass
class EvalConfig:
    # None: the variant's evaluation size.
    image_size: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_IMAGE_SIZE)
    batch_size: int = setting(64, at_least=1, at_most=MAX_BATCH_SIZE)
    # None: the whole evaluation split.
    steps: typing.Optional[int] = setting(None, at_least=1, at_most=MAX_STEPS)
    # Largest image file --mode=predict reads, in MiB (larger files are refused, not read).
    max_image_mb: int = setting(64, at_least=1)


@dataclasses.dataclass
class ExportConfig:
    # model.onnx: "auto" writes it when the converter (the "onnx" extra) is installed and otherwise
    # skips it with a warning; "true" fails the export without it; "false" never writes it.
    onnx: str = setting("auto", choices=("auto", "true", "false"))
    # model_int8.tflite, full-integer, calibrated on calibration_images training images.
    tflite_int8: bool = False
    calibration_images: int = setting(300, at_least=1, at_most=10_000)


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    progressive: ProgressiveConfig = dataclasses.field(default_factory=ProgressiveConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


def _leaves(node, prefix=""):
    """``(key, value, field)`` of every leaf of a config tree, in order."""
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", value, field


def _all_keys():
    return [key for key, _, _ in _leaves(Config())]


def _optional(annotation):
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation)


def _check(key, value, field):
    """ConfigError naming the key, the value and the rule unless ``value`` keeps ``field``'s rules."""
    choices, bounds = field.metadata.get("choices"), field.metadata.get("bounds")
    if value is None:
        return
    if field.metadata.get("auto_or_count"):
        if value != "auto" and not (value.isdigit() and bounds.holds(int(value))):
            raise ConfigError(f"config key {key!r} got {value!r}; expected 'auto' or an integer {bounds}")
    elif choices and value not in choices:
        raise ConfigError(f"config key {key!r} got {value!r}; expected one of {list(choices)}")
    elif bounds and not bounds.holds(value):
        raise _rule(key, value, f"must be {bounds}{' (or None for the default)' if _optional(field.type) else ''}")


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


def _coerce(key, value, annotation, field):
    """``value`` converted to the field's type, or ConfigError naming key and value."""
    optional = _optional(annotation)
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
            if field.metadata.get("auto_or_count") and value.isdigit():
                return str(int(value))  # "007" -> "7"
            return value.lower() if field.metadata.get("choices") or field.metadata.get("auto_or_count") else value
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
    field = {f.name: f for f in dataclasses.fields(node)}[leaf]
    value = _coerce(key, value, typing.get_type_hints(type(node))[leaf], field)
    _check(key, value, field)
    setattr(node, leaf, value)


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


def _yaml_problem(error):
    """A YAML error in one line: what, and where in the file."""
    mark = getattr(error, "problem_mark", None)
    if getattr(error, "problem", None) and mark is not None:
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def parse_yaml(data, source, saved=False):
    """The mapping in YAML ``data`` (bytes or text) read from ``source`` with the safe loader (no Python
    objects can be constructed), or ConfigError naming the file and what is wrong with it. A user's
    file may be empty; a run's ``saved`` config lists every key, so an empty one is damaged."""
    if isinstance(data, bytes):
        if b"\0" in data:
            raise ConfigError(f"config file {source!r} is binary, not YAML text")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ConfigError(f"config file {source!r} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                              "save it as UTF-8") from None
    try:
        tree = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {source!r} is not valid YAML: {_yaml_problem(e)}") from None
    if tree is None and saved:
        raise ConfigError(f"config file {source!r} is empty; a run's saved config lists every key")
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"config file {source!r} holds a {type(tree).__name__}, not a mapping of sections "
                          "(model:, train:, ...)")
    return tree or {}


def read_yaml(path, saved=False):
    """The mapping in the YAML file ``path`` (see ``parse_yaml``)."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a directory, not a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"config file {path!r} cannot be read: {e.strerror}") from None
    return parse_yaml(data, path, saved=saved)


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
        config = from_dict(read_yaml(saved, saved=True), source=saved)
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


def from_yaml(data, source):
    """A config from the bytes or text of a run's saved ``config.yaml``, named ``source`` in errors."""
    return from_dict(parse_yaml(data, source, saved=True), source=source)


def diff(a, b):
    """Keys whose values differ between two configs: ``{key: (a_value, b_value)}``."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _rule(key, value, rule):
    return ConfigError(f"config key {key!r} = {value!r}: {rule}")


def validate(config, num_replicas=1, last_train_size=None, eval_size=None, size_multiple=1):
    """Checks every key's rule (as setting a value does), then the rules between values; raises
    ConfigError naming the key, the value and the rule."""
    for key, value, field in _leaves(config):
        _check(key, value, field)
    address = config.data.service_address
    if address and not re.fullmatch(r"grpc://[^:/\s]+:\d{1,5}", address):
        raise _rule("data.service_address", address, "must look like grpc://HOST:PORT (or be empty)")
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
    start, end = config.progressive.image_size_start, config.progressive.image_size_end
    if start is not None and end is not None and start > end and config.progressive.num_stages > 1:
        raise _rule("progressive.image_size_start", start,
                    f"must be <= progressive.image_size_end ({end}): images grow over the stages")
    return validate_sizes(config, last_train_size, eval_size, size_multiple)


def validate_sizes(config, last_train_size=None, eval_size=None, size_multiple=1):
    """The rules of the sizes a run derives from its config (the last stage's training size, the
    evaluation size), checked once they are known; raises ConfigError."""
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
