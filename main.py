"""EfficientNetV2 command line: train, evaluate, export, predict.

This file is intentionally short: it reads the flags and calls the libraries, which are tested.

    python main.py --mode=train --model=s                     # built-in synthetic data
    python main.py --mode=train_and_eval --model=b0 --data_dir=/data/photos \
        --hparams_file=hparams/small_data.yaml
    python main.py --mode=eval --model_dir=runs/...
"""

import datetime
import logging as std_logging
import os
import re

from absl import app, flags, logging

flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval", "export", "predict"], "What to do.")
flags.DEFINE_string("model", "s", "Variant: b0, b1, b2, b3, s, m, l, xl (or efficientnetv2-s, ...).")
flags.DEFINE_string("dataset", "auto", "auto, synthetic, folder, imagenet, imagenet21k or tfds:<name>.")
flags.DEFINE_string("data_dir", None, "Data folder; without it, the built-in synthetic dataset.")
flags.DEFINE_string("model_dir", None, "Run folder (checkpoints, logs, config); default runs/<time>.")
flags.DEFINE_string("hparams", "", 'Overrides, e.g. "train.epochs=30,train.batch_size=64".')
flags.DEFINE_string("hparams_file", None, "A YAML file of overrides (only what differs).")
flags.DEFINE_enum("strategy", "auto", ["auto", "cpu", "gpus", "tpu", "multiworker"], "tf.distribute strategy.")
flags.DEFINE_string("tpu", "", "TPU name or address (TPU strategy).")
flags.DEFINE_bool("allow_config_change", False, "Resume a run although its config changed.")
flags.DEFINE_string("checkpoint", None, "A checkpoint path for eval/export (default: the latest).")
flags.DEFINE_string("export_dir", None, "Where --mode=export writes (default: model_dir/export).")
flags.DEFINE_multi_string("image", [], "Image files for --mode=predict.")
FLAGS = flags.FLAGS


def _model_dir():
    if FLAGS.model_dir:
        return FLAGS.model_dir
    if FLAGS.mode not in ("train", "train_and_eval"):
        raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir (the run to use)")
    return os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def _check_run_folder(model_dir):
    """eval, export and predict read a run: its folder must be one (a file or a typo is one line)."""
    if FLAGS.mode not in ("eval", "export", "predict") or "://" in model_dir:
        return
    if os.path.isfile(model_dir):
        raise NotADirectoryError(f"--model_dir {model_dir} is a file, not a run folder; pass the folder "
                                 f"training wrote (it holds config.yaml and checkpoints/)")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir {model_dir} does not exist; pass the folder training wrote")


def _check_model_flag(config, model_dir):
    """eval, export and predict use the run's own variant: a --model that says otherwise is refused,
    as evaluating or exporting one variant while the user asked for another is a silent wrong result."""
    from efficientnetv2.variants import get_variant
    from hparams.config import ConfigError

    if FLAGS.mode not in ("eval", "export", "predict") or not FLAGS["model"].present:
        return
    try:
        asked, run = get_variant(FLAGS.model).name, get_variant(config.model.variant).name
    except ValueError as e:
        raise ConfigError(f"--model={FLAGS.model}: {e}") from None
    if asked != run:
        raise ConfigError(f"--model={FLAGS.model} but {model_dir} is a run of EfficientNetV2-{run.upper()} "
                          f"(model.variant in its config.yaml); drop --model (the run decides) or pass a run of "
                          f"EfficientNetV2-{asked.upper()}")


def _drop_tensorflow_info(record):
    return record.levelno > std_logging.INFO or f"{os.sep}tensorflow{os.sep}" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # TensorFlow's own INFO lines (e.g. each checkpoint's "Sharding callback duration") drown ours.
    logging.get_absl_handler().addFilter(_drop_tensorflow_info)
    from hparams import config as config_lib
    from hparams.config import ConfigError

    model_dir = _model_dir()
    try:
        _check_run_folder(model_dir)
        config = config_lib.load_command_config(
            model_dir,
            use_saved=FLAGS.mode in ("eval", "export", "predict"),
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            hparams_file=FLAGS.hparams_file,
            overrides=FLAGS.hparams,
            model=FLAGS.model,
        )
        _check_model_flag(config, model_dir)
    except (ConfigError, NotADirectoryError, FileNotFoundError) as e:
        logging.error("%s", e)
        return 2
    logging.info("Model folder: %s", os.path.abspath(model_dir))

    import tensorflow as tf

    from efficientnetv2.train import distribute, run_lock, training
    from efficientnetv2.io.checkpointing import CheckpointError

    try:
        return _run(config, model_dir, distribute.get_strategy(FLAGS.strategy, FLAGS.tpu))
    except training.Preempted as e:
        logging.warning("%s", e)
        return training.PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        logging.error("Interrupted (Ctrl-C) without saving; what was written before is kept (a training run "
                      "resumes from its last checkpoint with the same command).")
        return 130  # 128 + SIGINT, as a shell reports it.
    except (ConfigError, CheckpointError, run_lock.RunLocked, training.NonFiniteLoss, training.DataExhausted,
            training.OutOfMemory, OSError, ValueError, tf.errors.OpError) as e:
        # One line saying what and where; the traceback only with --verbosity=1 or more.
        if logging.level_debug():
            logging.exception("%s: %s", type(e).__name__, _one_line(e))
        else:
            logging.error("%s: %s (--verbosity=1 shows the traceback)", type(e).__name__, _one_line(e))
        return 1


def _run(config, model_dir, strategy):
    from efficientnetv2.train import training

    if FLAGS.mode in ("train", "train_and_eval"):
        result = training.train(
            config,
            model_dir,
            strategy,
            evaluate_each_epoch=FLAGS.mode == "train_and_eval",
            allow_config_change=FLAGS.allow_config_change,
        )
        logging.info("Training done: epoch %d; checkpoints in %s", result["epoch"],
                     os.path.join(model_dir, "checkpoints"))
        if FLAGS.mode == "train":
            results = training.evaluate(config, model_dir, strategy)
            logging.info("Evaluation (%s, %d px): %s", _weights(results), results["image_size"], _fmt(results))
    elif FLAGS.mode == "eval":
        results = training.evaluate(config, model_dir, strategy, FLAGS.checkpoint)
        print(f"top1 {results.get('top1', float('nan')):.4f} top5 {results.get('top5', float('nan')):.4f} "
              f"(EfficientNetV2-{_variant(config)}, checkpoint {results['checkpoint']}, epoch {results['epoch']}, {results['image_size']} px, "
              f"{_weights(results)})")
    elif FLAGS.mode == "export":
        from efficientnetv2.io import export

        export_dir = FLAGS.export_dir or os.path.join(model_dir, "export")
        try:
            written = export.export_run(config, model_dir, export_dir, FLAGS.checkpoint)
        except export.ExportInterrupted as e:
            logging.error("%s", e)
            return e.exit_code
        for kind, path in written.items():
            logging.info("Exported EfficientNetV2-%s %s: %s", _variant(config), kind, path)
    elif FLAGS.mode == "predict":
        from efficientnetv2.io import export

        if not FLAGS.image:
            raise app.UsageError("--mode=predict needs at least one --image")
        failed = 0
        logging.info("Predicting with the EfficientNetV2-%s run in %s", _variant(config), model_dir)
        for image, top5, error in export.predict_files(config, model_dir, FLAGS.image, FLAGS.checkpoint):
            if error is not None:
                failed += 1
                logging.error("%s", error)
                continue
            print(image)
            for name, prob in top5:
                print(f"  {prob:7.4f}  {name}")
        if failed:
            logging.error("%d of %d images could not be predicted (see above).", failed, len(FLAGS.image))
            return 1
    return 0


def _one_line(error):
    """The first line of an error's message, without TensorFlow's graph-node and op annotations."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = re.sub(r"\{\{function_node .*?\}\}|\[Op:[^\]]*\]", "", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:800]


def _variant(config):
    from efficientnetv2.variants import get_variant

    return get_variant(config.model.variant).name.upper()


def _weights(results):
    return "EMA weights" if results.get("ema") else "training weights"


def _fmt(results):
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()) if isinstance(v, float))


if __name__ == "__main__":
    app.run(main)
