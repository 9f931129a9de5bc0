"""The Imagenette leaderboard: this project's recipe from random weights beside fast.ai's records.

    python benchmarks/leaderboard.py --size 128 --epochs 5 --runs 3
    python benchmarks/leaderboard.py --size 128 --epochs 20

The leaderboard's rules (fastai/imagenette): random initial weights, a fixed number of epochs at a
fixed image size, no test-time augmentation, validation at a size not above the training size. Each
run here is ``main.py``'s trainer with one recipe file (``--recipe``, default hparams/small_data.yaml)
and, as the only overrides, ``train.epochs``, the final training size and the evaluation size (both
``--size``) and ``train.seed``; it is then evaluated on the whole validation split at ``--size`` with
the center crop, with the weights the trainer evaluates (its EMA when the recipe keeps one). The
records are means of 5 runs of their own recipes on the original Imagenette; the copy the default
folder holds is squashed to 224x224 first, which the table says beside them.

CPU time is the process's (all threads, user and system) over the trainer's calls (model building,
data, training, checkpoints), evaluation excluded; wall time beside it.

``--arch resnet50`` is a reference arm, not a row of this project: ``keras.applications.ResNet50``
from random weights (inputs scaled to [-1, 1], the recipe's batch-norm momentum and zero-initialized
residual scales, the head's dropout) in EfficientNetV2's place in the same trainer, input pipeline,
recipe and optimizer. It tells whether a gap to the records is the network family or the rest.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402

from benchmarks import report  # noqa: E402
from efficientnetv2.train import evaluation, loop, training  # noqa: E402
from hparams import config as config_lib  # noqa: E402

# fastai/imagenette README, Imagenette, means of 5 runs: {size: {epochs: top-1 %}}.
RECORDS = {128: {5: 85.77, 20: 91.57, 80: 93.55, 200: 94.24}, 192: {5: 86.76, 20: 92.50},
           256: {5: 86.85, 20: 93.53}}


def leaderboard_overrides(epochs, size, seed):
    """The only keys a leaderboard row sets on top of the recipe."""
    return {"train.epochs": str(epochs), "progressive.image_size_end": str(size),
            "eval.image_size": str(size), "train.seed": str(seed)}


def resnet50(model_config, num_classes, input_size=None, dropout_rate=None):
    """keras.applications.ResNet50 from random weights, with the trainer's model interface."""
    import keras  # noqa: PLC0415 only for this arm

    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(input_size, input_size, 3),
                                       pooling="avg")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = model_config.bn_momentum
            # The last batch norm of each residual branch (conv<stage>_block<n>_3_bn).
            if model_config.zero_init_residual and layer.name.endswith("_3_bn"):
                layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
    x = keras.layers.Dropout(dropout_rate or 0.0, name="top_dropout")(base(x))
    outputs = keras.layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet50")


@contextlib.contextmanager
def architecture(arch):
    """The trainer builds ``arch`` instead of EfficientNetV2 inside the block."""
    if arch == "efficientnetv2":
        yield
        return
    saved = loop.build_model_from_config, evaluation.build_model_from_config
    loop.build_model_from_config = evaluation.build_model_from_config = resnet50
    try:
        yield
    finally:
        loop.build_model_from_config, evaluation.build_model_from_config = saved


def run_once(args, seed, model_dir):
    """Trains and evaluates one run: (top-1, train CPU s, train wall s, top-1 after each epoch). With
    ``--curve`` the run trains one epoch per ``train`` call (resuming its checkpoint) and is evaluated
    after each; the evaluations are not counted."""
    config = config_lib.load_config(data_dir=args.data_dir, hparams_file=args.recipe, overrides=args.hparams,
                                    model=args.model)
    config_lib.apply_overrides(config, leaderboard_overrides(args.epochs, args.size, seed), source="leaderboard")
    cpu = wall = 0.0
    curve = []
    for _ in range(args.epochs if args.curve else 1):
        with architecture(args.arch):
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            training.train(config, model_dir, verbose=args.verbose, max_epochs=1 if args.curve else None)
            cpu += time.process_time() - cpu_start
            wall += time.perf_counter() - wall_start
            curve.append(float(training.evaluate(config, model_dir)["top1"]))
    return curve[-1], cpu, wall, curve


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=report.IMAGENETTE, help="A folder with train/ and val/ class folders.")
    parser.add_argument("--size", type=int, default=128, help="Final training size and evaluation size (px).")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1, help="Runs with seeds seed, seed + 1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="b0", help="main.py's --model.")
    parser.add_argument("--arch", choices=("efficientnetv2", "resnet50"), default="efficientnetv2",
                        help="resnet50: keras.applications.ResNet50 in the same trainer and recipe (a reference arm).")
    parser.add_argument("--recipe", default=os.path.join(config_lib.HPARAMS_DIR, "small_data.yaml"))
    parser.add_argument("--hparams", default="", help="Extra overrides (not for leaderboard rows).")
    parser.add_argument("--work_dir", default=None, help="Run folders (default: a temp folder).")
    parser.add_argument("--curve", action="store_true", help="Evaluate after every epoch too (not timed).")
    parser.add_argument("--verbose", type=int, default=2, help="fit's verbosity (0, 1 or 2).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    if not os.path.isdir(os.path.join(args.data_dir, "train")):
        sys.exit(f"no train/ folder in {args.data_dir}")
    work = args.work_dir or tempfile.mkdtemp(prefix="leaderboard-")
    record = RECORDS.get(args.size, {}).get(args.epochs)
    rep = report.Report(
        f"Imagenette leaderboard: {args.size} px, {args.epochs} epochs", __file__, argv,
        model=args.model if args.arch == "efficientnetv2" else
        f"keras.applications.ResNet50 (reference arm; the recipe's sizes for {args.model})",
        recipe=os.path.relpath(args.recipe, os.path.dirname(config_lib.HPARAMS_DIR)),
        data=f"{os.path.basename(os.path.normpath(args.data_dir))} (train/ for training, the whole val/ "
             "for evaluation)",
        overrides=", ".join(f"{k}={v}" for k, v in leaderboard_overrides(args.epochs, args.size, "<seed>").items())
        + (f", {args.hparams}" if args.hparams else ""))
    runs = rep.table(["run", "seed", "top-1", "train CPU s", "train wall s", "top-1 after each epoch"])
    top1s, cpus = [], []
    for i in range(args.runs):
        seed = args.seed + i
        top1, cpu, wall, curve = run_once(args, seed, os.path.join(work, f"run{i}"))
        top1s.append(100 * top1)
        cpus.append(cpu)
        runs.add(i + 1, seed, f"{100 * top1:.2f}%", f"{cpu:.0f}", f"{wall:.0f}",
                 ", ".join(f"{100 * t:.1f}" for t in curve) if args.curve else "-")
    summary = rep.table(["", f"top-1 ({args.size} px, {args.epochs} epochs)", "runs", "train CPU s per run"])
    spread = f" ± {statistics.stdev(top1s):.2f}" if len(top1s) > 1 else ""
    name = args.model if args.arch == "efficientnetv2" else "ResNet50"
    summary.add(f"ours ({name}, {os.path.basename(args.recipe)})", f"{statistics.mean(top1s):.2f}%{spread}",
                len(top1s), f"{statistics.mean(cpus):.0f}")
    summary.add("fast.ai record (original Imagenette; ours: the 224x224 squashed copy)",
                f"{record:.2f}%" if record else "none at this size and length", 5 if record else "-", "-")
    rep.print()
    return {"top1": top1s, "cpu": cpus, "record": record}


if __name__ == "__main__":
    main()
