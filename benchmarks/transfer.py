"""Fine-tuning from a pretrained run against the same recipe from scratch, on real photos, offline.

    python benchmarks/transfer.py --data_dir ../shared/data/imagenette --plot transfer.png

The classes of ``--data_dir`` (sorted) are split in two halves, each seen through a folder of links
(no photo is copied). Our own trainer pretrains on the first half (``--pretrain_epochs``); the second
half is then trained twice with one config, once from the pretrained run through
``train.init_checkpoint=<run folder>`` (the path ``init_checkpoint=imagenet`` takes with a downloaded
file) and once from random weights. This stands in for ImageNet weights, which cannot be fetched
offline: what it shows is the path end to end and the shape of the gain, not ImageNet's size of it.
With as many classes in both halves the pretrained classifier fits and is loaded too; it is trained
like the rest.

The two target runs are interleaved epoch by epoch (one ``training.train`` call per epoch, resuming
from its checkpoint), so a change in machine load hits both alike; each is evaluated after every epoch
(EMA weights), outside the timed training. "train s" is the fit time (images / images per second);
the pretraining's own time is reported apart. ``--plot FILE.png`` draws top-1 against training time
(needs matplotlib, an optional extra).
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

from benchmarks import report  # noqa: E402
from efficientnetv2.train import training  # noqa: E402
from hparams import config as config_lib  # noqa: E402

ARMS = {"finetune": "fine-tuned from the pretrained run", "scratch": "from scratch (same recipe)"}


def split_classes(data_dir, work):
    """Two folders of links to the class folders of ``data_dir``: its first and second half."""
    splits = [s for s in ("train", "val") if os.path.isdir(os.path.join(data_dir, s))] or [""]
    classes = sorted(c for c in os.listdir(os.path.join(data_dir, splits[0]))
                     if os.path.isdir(os.path.join(data_dir, splits[0], c)))
    if len(classes) < 4:
        raise SystemExit(f"{data_dir} has {len(classes)} classes; the benchmark needs at least 4")
    half = len(classes) // 2
    halves = {"pretrain": classes[:half], "target": classes[half: 2 * half]}
    folders = {}
    for name, chosen in halves.items():
        folders[name] = os.path.join(work, f"data_{name}")
        for split in splits:
            os.makedirs(os.path.join(folders[name], split), exist_ok=True)
            for c in chosen:
                link = os.path.join(folders[name], split, c)
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(os.path.join(data_dir, split, c)), link)
    return folders, halves


def make_config(args, data_dir, epochs, init_checkpoint=""):
    """One recipe for every run: B0 at ``--width``/``--depth``, progressive ``--start_size`` ->
    ``--image_size`` with adaptive dropout, AdamW with warmup and cosine decay (small_data.yaml's
    shape at the benchmark's sizes)."""
    overrides = {
        "model.variant": "b0",
        "model.width": args.width,
        "model.depth": args.depth,
        "model.bn_momentum": 0.9,
        "model.drop_path_rate": 0.05,
        "data.dataset": "folder",
        "data.data_dir": data_dir,
        "train.epochs": epochs,
        "train.batch_size": args.batch_size,
        "train.steps_per_epoch": args.steps_per_epoch or None,
        "train.optimizer": "adamw",
        "train.weight_decay": 0.05,
        "train.lr_base": args.lr,
        "train.lr_base_batch_size": args.batch_size,
        "train.lr_schedule": "cosine",
        "train.warmup_epochs": 1.0,
        "train.ema_decay": args.ema_decay,
        "train.seed": args.seed,
        "train.init_checkpoint": init_checkpoint,
        "progressive.num_stages": args.stages,
        "progressive.image_size_start": args.start_size,
        "progressive.image_size_end": args.image_size,
        "progressive.randaug_start": 0,
        "progressive.randaug_end": 0,
        "progressive.mixup_start": 0,
        "progressive.mixup_end": 0,
        "progressive.dropout_start": 0.05,
        "progressive.dropout_end": 0.2,
        "eval.image_size": args.image_size,
        "eval.batch_size": 64,
        "eval.steps": args.eval_steps or None,
    }
    return config_lib.apply_overrides(config_lib.Config(), {k: str(v) for k, v in overrides.items()})


def fit_seconds(logs, plan):
    params = plan.stages[int(logs["stage"]) - 1]
    images = plan.stage_steps(params) * params.batch_size
    return images / logs["images_per_sec"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=report.IMAGENETTE)
    parser.add_argument("--work_dir", default=None, help="Run folders (default: a temp folder).")
    parser.add_argument("--pretrain_epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="Epochs of each run on the target classes.")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps_per_epoch", type=int, default=0, help="0: the whole training split.")
    parser.add_argument("--eval_steps", type=int, default=0, help="0: the whole validation split.")
    parser.add_argument("--lr", type=float, default=0.004, help="Peak learning rate at --batch_size.")
    parser.add_argument("--ema_decay", type=float, default=0.99)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--start_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="Write the curves as a PNG.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    if not os.path.isdir(args.data_dir):
        sys.exit(f"no data folder at {args.data_dir}")
    work = args.work_dir or tempfile.mkdtemp(prefix="transfer-bench-")
    folders, halves = split_classes(args.data_dir, work)
    rep = report.Report(
        "Fine-tuning vs from scratch on real photos", __file__, argv,
        pretrained_on=f"{len(halves['pretrain'])} classes ({', '.join(halves['pretrain'])})",
        target=f"{len(halves['target'])} other classes ({', '.join(halves['target'])})",
        model=f"EfficientNetV2-B0 width {args.width} depth {args.depth}, {args.stages} stage(s) "
              f"{args.start_size}->{args.image_size} px, eval {args.image_size} px (EMA weights)",
        budget=f"pretraining {args.pretrain_epochs} epochs; each target run {args.epochs} epochs; batch "
               f"{args.batch_size}; steps per epoch {args.steps_per_epoch or 'all'}; eval steps "
               f"{args.eval_steps or 'all'}",
    )
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; runs in {work}", flush=True)

    pre_dir = os.path.join(work, "pretrain")
    pre_config = make_config(args, folders["pretrain"], args.pretrain_epochs)
    start = time.perf_counter()
    training.train(pre_config, pre_dir, verbose=0)
    pre_wall = time.perf_counter() - start
    pre_top1 = training.evaluate(pre_config, pre_dir)["top1"]
    print(f"pretraining: {pre_wall:.0f} s wall, val top-1 {pre_top1:.3f} on its own classes", flush=True)

    configs = {"finetune": make_config(args, folders["target"], args.epochs, init_checkpoint=pre_dir),
               "scratch": make_config(args, folders["target"], args.epochs)}
    curves = {arm: [] for arm in configs}
    total = {arm: 0.0 for arm in configs}
    for epoch in range(args.epochs):
        for arm, config in configs.items():
            result = training.train(config, os.path.join(work, arm), verbose=0, max_epochs=1)
            total[arm] += fit_seconds(result["logs"], result["plan"])
            top1 = training.evaluate(config, os.path.join(work, arm))["top1"]
            curves[arm].append({"epoch": epoch + 1, "train_s": total[arm], "top1": top1})
            print(f"epoch {epoch + 1} {arm:8s} loss {result['logs']['loss']:.3f} train {total[arm]:6.1f} s "
                  f"val top-1 {top1:.3f}", flush=True)

    title = (f"B0 x{args.width}/{args.depth} on {len(halves['target'])} Imagenette classes, "
             f"pretrained on the other {len(halves['pretrain'])}")
    table = rep.table(["epoch", "fine-tuned: train s", "fine-tuned: val top-1", "scratch: train s",
                       "scratch: val top-1"], "Validation top-1 on the target classes after each epoch")
    for f, s in zip(curves["finetune"], curves["scratch"]):
        table.add(f["epoch"], f"{f['train_s']:.0f}", f"{100 * f['top1']:.1f}%", f"{s['train_s']:.0f}",
                  f"{100 * s['top1']:.1f}%")
    best_scratch = max(p["top1"] for p in curves["scratch"])
    reached = next((p for p in curves["finetune"] if p["top1"] >= best_scratch), None)
    rep.note(f"Pretraining: {pre_wall:.0f} s wall for {args.pretrain_epochs} epochs (not in the table's "
             f"times), val top-1 {100 * pre_top1:.1f}% on its own classes. "
             + (f"Fine-tuning reached scratch's best top-1 ({100 * best_scratch:.1f}%) after epoch "
                f"{reached['epoch']} ({reached['train_s']:.0f} s vs {curves['scratch'][-1]['train_s']:.0f} s)."
                if reached else f"Fine-tuning did not reach scratch's best top-1 ({100 * best_scratch:.1f}%)."))
    rep.print()
    if args.plot:
        report.plot_top1_against_time(
            args.plot, {ARMS[arm]: [(p["train_s"], p["top1"]) for p in points] for arm, points in curves.items()},
            title, xlabel="training time on the target classes (s)")
        print(f"Curves drawn in {args.plot}")


if __name__ == "__main__":
    main()
