"""Progressive learning, measured: the same model and epochs trained three ways, in one invocation.

    python benchmarks/progressive.py --data_dir ../shared/data/imagenette

(a) fixed: every epoch at the final image size with the final regularization;
(b) progressive size, regularization fixed at its final value;
(c) progressive size with adaptive regularization (the paper's method).

The paper's EfficientNetV2-S setting (128 -> 300 px, eval 384, RandAugment 5 -> 15, dropout 0.1 -> 0.3,
4 stages) is scaled to a 2-core CPU: sizes by 128/300 (128 -> 56 px start, 300 -> 128 px end, eval
384 -> 160 px), a B0 of half width and depth, RandAugment 2 -> 10 (weaker: the model is ~28x smaller
than S and trains for a few epochs), dropout 0.1 -> 0.3 and mixup off as for S.

Fairness on a shared machine: the three runs are interleaved epoch by epoch (each call of
``training.train`` trains one epoch and returns; the next resumes from its checkpoint), so a change in
machine load hits all three alike. The table's "train s" is the sum of the epochs' fit time (including
the first step's trace in each call); "wall s" adds model building and checkpoint restore.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from efficientnetv2.train import training  # noqa: E402
from hparams import config as config_lib  # noqa: E402


def make_config(args, mode):
    final_size, start_size = args.image_size, args.start_size
    overrides = {
        "model.variant": "b0",
        "model.width": args.width,
        "model.depth": args.depth,
        "model.bn_momentum": 0.9,
        "model.drop_path_rate": 0.1,
        "data.dataset": "folder",
        "data.data_dir": args.data_dir,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.steps_per_epoch": args.steps_per_epoch or None,
        "train.lr_base": args.lr,
        "train.lr_base_batch_size": args.batch_size,
        "train.lr_schedule": "cosine",
        "train.warmup_epochs": 1.0,
        "train.ema_decay": 0.999,
        "train.seed": args.seed,
        "progressive.num_stages": args.stages,
        "eval.image_size": args.eval_size,
        "eval.batch_size": 64,
        "eval.steps": args.eval_steps or None,
    }
    if mode == "fixed":
        overrides.update({  # One stage at the final values: training without progressive learning.
            "progressive.num_stages": 1,
            "progressive.image_size_end": final_size,
            "progressive.randaug_end": args.randaug_end,
            "progressive.mixup_end": 0.0,
            "progressive.dropout_end": args.dropout_end,
        })
    else:
        adaptive = mode == "adaptive"
        overrides.update({
            "progressive.image_size_start": start_size,
            "progressive.image_size_end": final_size,
            "progressive.randaug_start": args.randaug_start if adaptive else args.randaug_end,
            "progressive.randaug_end": args.randaug_end,
            "progressive.dropout_start": args.dropout_start if adaptive else args.dropout_end,
            "progressive.dropout_end": args.dropout_end,
            "progressive.mixup_start": 0.0,
            "progressive.mixup_end": 0.0,
        })
    config = config_lib.Config()
    return config_lib.apply_overrides(config, {k: str(v) for k, v in overrides.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                           "data", "imagenette"))
    parser.add_argument("--work_dir", default=None, help="Run folders (default: a temp folder).")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps_per_epoch", type=int, default=0, help="0: the whole training split.")
    parser.add_argument("--eval_steps", type=int, default=0, help="0: the whole validation split.")
    parser.add_argument("--lr", type=float, default=0.004, help="Peak learning rate at --batch_size.")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--start_size", type=int, default=56)
    parser.add_argument("--eval_size", type=int, default=160)
    parser.add_argument("--randaug_start", type=float, default=2.0)
    parser.add_argument("--randaug_end", type=float, default=10.0)
    parser.add_argument("--dropout_start", type=float, default=0.1)
    parser.add_argument("--dropout_end", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="fixed,progressive_size,adaptive")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)

    if not os.path.isdir(args.data_dir):
        sys.exit(f"no data folder at {args.data_dir}")
    work = args.work_dir or tempfile.mkdtemp(prefix="progressive-bench-")
    modes = args.modes.split(",")
    configs = {m: make_config(args, m) for m in modes}
    stats = {m: {"train_s": 0.0, "wall_s": 0.0, "images": 0, "log": []} for m in modes}
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; runs in {work}", flush=True)
    for epoch in range(args.epochs):
        for mode in modes:
            start = time.perf_counter()
            result = training.train(configs[mode], os.path.join(work, mode), verbose=0, max_epochs=1)
            wall = time.perf_counter() - start
            logs = result["logs"]
            images = result["plan"].steps_per_epoch * result["plan"].global_batch
            stats[mode]["wall_s"] += wall
            stats[mode]["train_s"] += images / logs["images_per_sec"]
            stats[mode]["images"] += images
            print(f"epoch {epoch + 1:2d} {mode:17s} {int(logs['image_size']):4d} px  RandAugment "
                  f"{logs['randaug_magnitude']:4.1f}  dropout {logs['dropout_rate']:.2f}  loss "
                  f"{logs['loss']:.3f}  top1(train) {logs.get('top1', float('nan')):.3f}  "
                  f"{logs['images_per_sec']:6.1f} img/s  {wall:6.1f} s", flush=True)
    for mode in modes:
        results = training.evaluate(configs[mode], os.path.join(work, mode))
        stats[mode]["top1"] = results["top1"]
    base = stats[modes[0]]
    print()
    print(f"EfficientNetV2-B0 (width {args.width}, depth {args.depth}) on {args.data_dir}: {args.epochs} epochs, "
          f"{args.stages} stages, batch {args.batch_size}, sizes {args.start_size}->{args.image_size} px, "
          f"eval {args.eval_size} px (EMA weights), TF {tf.__version__}, {os.cpu_count()} cores")
    print(f"| run | train s | wall s | images/s | val top-1 | train time vs (a) | top-1 vs (a) |")
    print(f"|---|---|---|---|---|---|---|")
    names = {"fixed": "(a) fixed size, final regularization",
             "progressive_size": "(b) progressive size, fixed regularization",
             "adaptive": "(c) progressive size + adaptive regularization"}
    for mode in modes:
        s = stats[mode]
        print(f"| {names.get(mode, mode)} | {s['train_s']:.0f} | {s['wall_s']:.0f} | "
              f"{s['images'] / s['train_s']:.1f} | {100 * s['top1']:.1f}% | "
              f"{s['train_s'] / base['train_s']:.2f}x | {100 * (s['top1'] - base['top1']):+.1f} pts |")


if __name__ == "__main__":
    main()
