import typing

import pytest
from hypothesis import given, settings, strategies as st

from hparams import config as config_lib
from hparams.config import Config, ConfigError


def test_defaults_are_the_papers_imagenet_recipe():
    c = Config()
    t = c.train
    assert (t.epochs, t.batch_size, t.lr_base, t.lr_base_batch_size) == (350, 4096, 0.256, 4096)
    assert (t.optimizer, t.rmsprop_rho, t.momentum, t.epsilon) == ("rmsprop", 0.9, 0.9, 1e-3)
    assert (t.lr_decay_rate, t.lr_decay_epochs, t.weight_decay, t.label_smoothing) == (0.97, 2.4, 1e-5, 0.1)
    assert t.ema_decay == 0.9999
    assert (c.model.bn_momentum, c.model.drop_path_rate) == (0.99, 0.2)
    assert c.progressive.num_stages == 4


def test_merge_order_defaults_dataset_file_overrides(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  epochs: 7\n  batch_size: 32\n")
    c = config_lib.load_config(dataset="synthetic", hparams_file=str(user), overrides="train.epochs=9", model="b0")
    assert c.model.variant == "b0"
    assert c.train.steps_per_epoch == 20          # from hparams/synthetic.yaml
    assert c.train.batch_size == 32               # the user file beats the dataset file
    assert c.train.epochs == 9                    # the command line beats the file
    assert c.train.lr_base == 0.256               # untouched default


def test_auto_dataset_without_data_dir_uses_the_synthetic_config():
    assert config_lib.load_config().train.epochs == 4
    assert config_lib.load_config(data_dir="/somewhere").train.epochs == 350


@pytest.mark.parametrize("name", ["imagenet", "imagenet21k", "cifar10", "cifar100", "synthetic", "small_data"])
def test_every_named_file_loads(name):
    c = config_lib.apply_mapping(Config(), config_lib.read_yaml(config_lib.named_config_path(name)), source=name)
    config_lib.validate(c)


def test_tfds_dataset_picks_its_named_file():
    assert config_lib.load_config(dataset="tfds:cifar10", data_dir="/tfds").train.batch_size == 512


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("train.epoch=3", r"unknown config key 'train.epoch'; did you mean 'train.epochs'"),
        ("trian.epochs=3", r"unknown config key 'trian.epochs'; did you mean 'train.epochs'"),
        ("train.epochs=three", r"'train.epochs' expects int, got 'three'"),
        ("train.epochs=2.5", r"'train.epochs' expects int, got '2.5'"),
        ("train.lr_base=fast", r"'train.lr_base' expects float"),
        ("train.deterministic=maybe", r"'train.deterministic' expects bool"),
        ("progressive.enabled=false", r"'progressive.enabled' was removed; use progressive.num_stages=1"),
        ("train.image_size=300", r"'train.image_size' was removed; use progressive.image_size_end"),
        ("model.dropout_rate=0.3", r"'model.dropout_rate' was removed; use progressive.dropout_end"),
        ("train.stop_on_nan=false", r"'train.stop_on_nan' was removed; use nothing: a NaN"),
        ("train.optimizer=lamb", r"'train.optimizer' got 'lamb'; expected one of \['rmsprop', 'sgd', 'adamw'\]"),
        ("train.epochs", r"not of the form key=value"),
        ("train.epochs=None", r"'train.epochs' expects int, got 'None'"),
        ("train.lr_base=nan", r"'train.lr_base' got 'nan'; expected a finite number"),
        ("train.weight_decay=-inf", r"'train.weight_decay' got '-inf'; expected a finite number"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load_config(overrides=overrides)


def test_bad_file_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.epochz'"):
        config_lib.load_config(hparams_file=str(bad))


def test_yaml_is_read_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train:\n  epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load_config(hparams_file=str(evil))


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_config(hparams_file="/no/such.yaml")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"# caf\xe9 au lait\ntrain:\n  epochs: 3\n", r"is not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"is binary, not YAML text"),
        (b"train:\n  epochs: 3\n bad: [1,\n", r"is not valid YAML: .*\(line \d+, column \d+\)"),
        (b"- train\n- eval\n", r"holds a list, not a mapping of sections"),
    ],
)
def test_an_unreadable_hparams_file_is_one_line_naming_it(tmp_path, content, message):
    user = tmp_path / "user.yaml"
    user.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^config file '.*user.yaml' " + message) as raised:
        config_lib.load_config(hparams_file=str(user))
    assert "\n" not in str(raised.value)


def test_an_hparams_directory_is_called_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*' is a directory, not a YAML file"):
        config_lib.load_config(hparams_file=str(tmp_path))


def test_an_empty_hparams_file_changes_nothing(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("# Nothing differs.\n")
    assert config_lib.load_config(hparams_file=str(user)) == config_lib.load_config()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"is empty; a run's saved config lists every key"),
        (b"model:\n  variant: b0\ntrain:\n  epochs: [4\n", r"is not valid YAML"),
        (bytes(range(256)) * 4, r"is binary, not YAML text"),
        (b"\xff\xfe\xfa garbage", r"is not UTF-8 text"),
    ],
)
def test_a_damaged_saved_config_is_one_line_naming_it(tmp_path, content, message):
    # Not taken for the defaults (an empty file once read as "a run with another config").
    (tmp_path / "config.yaml").write_bytes(content)
    for read in (lambda: config_lib.load_command_config(str(tmp_path), use_saved=True),
                 lambda: config_lib.from_yaml(content, source=str(tmp_path / "config.yaml"))):
        with pytest.raises(ConfigError, match=r"^config file '.*config.yaml' " + message) as raised:
            read()
        assert "\n" not in str(raised.value)


def test_resuming_a_run_with_a_damaged_saved_config_names_the_file(tmp_path):
    from efficientnetv2.train import run_folder

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"")  # A run that trained: its config is compared.
    (tmp_path / "config.yaml").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"config.yaml' is empty; a run's saved config lists every key"):
        run_folder.check_config(config_lib.load_config(model="b0"), str(tmp_path), allow_config_change=False)


def test_optional_values_accept_none():
    c = config_lib.load_config(overrides="train.steps_per_epoch=None,model.width=1.5,eval.image_size=null")
    assert c.train.steps_per_epoch is None and c.model.width == 1.5 and c.eval.image_size is None


def test_values_with_commas_are_quoted_or_bracketed():
    assert config_lib.parse_overrides("model.blocks=[a,b], train.epochs=2") == {
        "model.blocks": "a,b", "train.epochs": "2"}
    assert config_lib.parse_overrides("model.blocks='a,b',data.data_dir=\"/x,y\"") == {
        "model.blocks": "a,b", "data.data_dir": "/x,y"}


def test_dump_round_trip():
    c = config_lib.load_config(overrides="train.epochs=12,model.variant=m")
    again = config_lib.from_dict(config_lib.yaml.safe_load(config_lib.dump(c)))
    assert again == c
    assert config_lib.diff(c, again) == {}
    again.train.epochs = 13
    assert config_lib.diff(c, again) == {"train.epochs": (12, 13)}


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Absurd sizes (issue 31 item 6): refused by name before TensorFlow sees them.
        ("model.depth=1e6", r"'model.depth' = 1000000.0: must be > 0 and <= 8 \(or None for the default\)"),
        ("model.width=1000", r"'model.width' = 1000.0: must be > 0 and <= 8"),
        ("train.batch_size=1000000000", r"'train.batch_size' = 1000000000: must be >= 1 and <= 65536"),
        ("train.steps_per_epoch=1000000000000",
         r"'train.steps_per_epoch' = 1000000000000: must be >= 1 and <= 10000000"),
        ("eval.batch_size=100000", r"'eval.batch_size' = 100000: must be >= 1 and <= 65536"),
        ("progressive.max_batch_size=1000000", r"'progressive.max_batch_size' = 1000000: must be >= 1 and <= 65536"),
        ("model.head_filters=1000000", r"'model.head_filters' = 1000000: must be >= 1 and <= 16384"),
        ("progressive.num_stages=1000000", r"'progressive.num_stages' = 1000000: must be >= 1 and <= 10000"),
        ("train.epochs=1000000", r"'train.epochs' = 1000000: must be >= 1 and <= 10000"),
        ("eval.steps=1000000000", r"'eval.steps' = 1000000000: must be >= 1 and <= 10000000"),
        ("train.log_stage_images=100000", r"'train.log_stage_images' = 100000: must be >= 0 and <= 64"),
        ("train.steps_per_execution=1000000000",
         r"'train.steps_per_execution' got '1000000000'; expected 'auto' or an integer >= 1 and <= 10000000"),
        ("eval.image_size=100000", r"'eval.image_size' = 100000: must be >= 1 and <= 1024"),
        ("progressive.image_size_end=4096", r"'progressive.image_size_end' = 4096: must be >= 1 and <= 1024"),
        # Every key's range (issue 31 item 7), checked when the value is set.
        ("progressive.dropout_end=1.5", r"'progressive.dropout_end' = 1.5: must be >= 0 and < 1"),
        ("progressive.mixup_end=-1", r"'progressive.mixup_end' = -1.0: must be >= 0"),
        ("train.max_archive_mb=-5", r"'train.max_archive_mb' = -5: must be >= 1"),
        ("eval.max_image_mb=-1", r"'eval.max_image_mb' = -1: must be >= 1"),
        ("train.epsilon=0", r"'train.epsilon' = 0.0: must be > 0 and <= 1"),
        ("model.bn_epsilon=0", r"'model.bn_epsilon' = 0.0: must be > 0 and <= 1"),
        ("train.label_smoothing=1", r"'train.label_smoothing' = 1.0: must be >= 0 and < 1"),
        ("train.ema_decay=1", r"'train.ema_decay' = 1.0: must be >= 0 and < 1"),
        ("train.weight_decay=-1e-5", r"'train.weight_decay' = -1e-05: must be >= 0 and < 1"),
        ("train.lr_base=-0.1", r"'train.lr_base' = -0.1: must be >= 0"),
        ("train.lr_min=-1", r"'train.lr_min' = -1.0: must be >= 0"),
        ("train.lr_hold_fraction=1", r"'train.lr_hold_fraction' = 1.0: must be >= 0 and < 1"),
        ("train.lr_decay_rate=0", r"'train.lr_decay_rate' = 0.0: must be > 0 and <= 1"),
        ("train.lr_decay_epochs=0", r"'train.lr_decay_epochs' = 0.0: must be > 0"),
        ("train.warmup_epochs=-1", r"'train.warmup_epochs' = -1.0: must be >= 0"),
        ("train.momentum=1", r"'train.momentum' = 1.0: must be >= 0 and < 1"),
        ("train.rmsprop_rho=-0.5", r"'train.rmsprop_rho' = -0.5: must be >= 0 and < 1"),
        ("train.seed=-1", r"'train.seed' = -1: must be >= 0 and <= 4294967295"),
        ("train.keep_checkpoints=0", r"'train.keep_checkpoints' = 0: must be >= 1"),
        ("progressive.randaug_end=31", r"'progressive.randaug_end' = 31.0: must be >= 0 and <= 30"),
        ("progressive.round_image_size_to=-8", r"'progressive.round_image_size_to' = -8: must be >= 0 and <= 1024"),
        ("data.randaug_pixel_scale=0", r"'data.randaug_pixel_scale' = 0.0: must be > 0 and <= 8"),
        ("data.randaug_num_layers=-1", r"'data.randaug_num_layers' = -1: must be >= 0 and <= 16"),
        ("data.cutmix_alpha=-1", r"'data.cutmix_alpha' = -1.0: must be >= 0"),
        ("data.holdout_examples=-1", r"'data.holdout_examples' = -1: must be >= 0"),
        ("train.epochs=0", r"'train.epochs' = 0: must be >= 1"),
        ("train.batch_size=-8", r"'train.batch_size' = -8: must be >= 1"),
        ("train.steps_per_epoch=0", r"'train.steps_per_epoch' = 0: must be >= 1"),
        ("eval.image_size=-1", r"'eval.image_size' = -1: must be >= 1 and <= 1024 \(or None for the default\)"),
    ],
)
def test_a_value_out_of_its_range_is_refused_when_set(overrides, message):
    with pytest.raises(ConfigError, match=r"^--hparams: config key " + message):
        config_lib.load_config(data_dir="/x", overrides=overrides)


def test_a_file_value_out_of_its_range_names_the_file(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("progressive:\n  dropout_end: 1.5\n")
    message = r"user.yaml: config key 'progressive.dropout_end' = 1.5: must be >= 0 and < 1"
    with pytest.raises(ConfigError, match=message):
        config_lib.load_config(hparams_file=str(user))


def test_validate_checks_every_key_of_a_config_built_in_code():
    c = Config()
    c.train.epsilon = 0.0
    with pytest.raises(ConfigError, match=r"'train.epsilon' = 0.0: must be > 0 and <= 1"):
        config_lib.validate(c)
    c = Config()
    c.train.optimizer = "lamb"
    with pytest.raises(ConfigError, match=r"'train.optimizer' got 'lamb'; expected one of"):
        config_lib.validate(c)


def test_the_bounds_admit_the_largest_real_runs():
    c = config_lib.load_config(data_dir="/x", overrides=(
        "train.batch_size=65536,train.lr_base_batch_size=65536,eval.batch_size=65536,model.width=8,model.depth=8,"
        "progressive.image_size_end=1024,eval.image_size=1024,progressive.randaug_end=30,train.epochs=10000,"
        "train.steps_per_epoch=10000000,train.seed=4294967295,train.lr_decay_rate=1"))
    config_lib.validate(c, num_replicas=2048)


_FREE_TEXT = {"model.variant", "model.blocks", "data.dataset", "data.data_dir", "data.service_address",
              "train.init_checkpoint"}


def test_every_key_has_its_rule_beside_its_field():
    # A new number needs a range and a new string its choices (or a place among the free-text keys).
    for key, _, field in config_lib._leaves(Config()):
        rules = field.metadata
        base = [t for t in typing.get_args(field.type) if t is not type(None)] or [field.type]
        if base[0] in (int, float):
            assert rules.get("bounds") is not None, key
        elif base[0] is str and key not in _FREE_TEXT:
            assert rules.get("choices") or rules.get("auto_or_count"), key


def test_the_magnitude_bound_is_the_pipelines():
    from datasets import randaugment

    assert config_lib.MAX_RANDAUG_MAGNITUDE == randaugment.MAX_MAGNITUDE


@pytest.mark.parametrize(
    "overrides, kwargs, message",
    [
        ("train.batch_size=30", dict(num_replicas=4), r"'train.batch_size' = 30: must be divisible by the number of replicas \(4\)"),
        ("eval.batch_size=30", dict(num_replicas=4), r"'eval.batch_size' = 30: must be divisible by the number of replicas \(4\)"),
        ("progressive.image_size_start=320,progressive.image_size_end=128", {},
         r"'progressive.image_size_start' = 320: must be <= progressive.image_size_end \(128\)"),
        ("", dict(last_train_size=300, eval_size=256), r"'eval.image_size' = 256: must be >= the last training image size \(300\)"),
        ("", dict(last_train_size=300, eval_size=384, size_multiple=8), r"'last training image size' = 300: must be a multiple of 8"),
    ],
)
def test_validate_rules(overrides, kwargs, message):
    c = config_lib.load_config(data_dir="/x", overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c, **kwargs)


_keys = st.sampled_from(config_lib._all_keys() + ["train.nope", "x", "", "model..variant"])
_values = st.text(alphabet="abc0123456789.-eE_ ,[]=", max_size=12) | st.sampled_from(
    ["true", "false", "None", "1e-3", "-1", "0", "inf", "nan"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_keys, _values), max_size=4), st.text(max_size=20))
def test_property_override_parser_parses_or_raises_config_error(pairs, junk):
    text = ",".join(f"{k}={v}" for k, v in pairs) + ("," + junk if junk else "")
    try:
        c = config_lib.load_config(data_dir="/x", overrides=text)
    except ConfigError:
        return
    assert isinstance(c, Config)


def test_a_saved_config_of_an_earlier_version_is_translated():
    old = config_lib.to_dict(Config())
    del old["progressive"]["num_stages"]
    old["progressive"].update(enabled=False, num_stages=4)
    old["train"].update(image_size=256, stop_on_nan=True)
    old["data"].update(randaug_magnitude=9.0, mixup_alpha=0.1)
    old["model"]["dropout_rate"] = 0.25
    c = config_lib.from_dict(old, source="run/config.yaml")
    p = c.progressive
    assert (p.num_stages, p.image_size_end, p.randaug_end, p.mixup_end, p.dropout_end) == (1, 256, 9.0, 0.1, 0.25)
    # Progressive learning was on: the fixed-schedule values were never read and are dropped.
    old["progressive"]["enabled"] = True
    old["progressive"]["num_stages"] = 4
    old["train"]["image_size"] = None
    assert config_lib.diff(config_lib.from_dict(old), Config()) == {}


def test_a_command_on_a_finished_run_reads_its_saved_config(tmp_path):
    saved = config_lib.load_config(dataset="synthetic", model="b0", overrides="train.epochs=7")
    (tmp_path / "config.yaml").write_text(config_lib.dump(saved))
    c = config_lib.load_command_config(str(tmp_path), use_saved=True, model="s", overrides="eval.batch_size=8",
                                       data_dir="/elsewhere")
    assert (c.model.variant, c.train.epochs, c.eval.batch_size, c.data.data_dir) == ("b0", 7, 8, "/elsewhere")
    # Training merges from the defaults (its saved config is compared later, not read).
    c = config_lib.load_command_config(str(tmp_path), use_saved=False, model="s")
    assert (c.model.variant, c.train.epochs) == ("s", 4)  # hparams/synthetic.yaml, not the saved 7


def test_one_stage_ignores_the_start_size():
    c = config_lib.load_config(overrides="progressive.num_stages=1,progressive.image_size_start=64,"
                                         "progressive.image_size_end=32")
    config_lib.validate(c)  # One stage never trains at the start size: no complaint.
