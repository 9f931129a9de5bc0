"""What an ImageNet-21k head costs per training step, and what per-step metrics cost on it.

The same backbone with a 1,000-class head and with a 21,843-class head (the reference's 21k class
count), compiled as the trainer compiles them (``compilation.loss_and_metrics``: normalized-softmax
cross-entropy and top-1/top-5/top-1-of-any-label for the multi-label 21k data, categorical
cross-entropy and top-1/top-5 for 1k; RMSProp with EMA), and, for contrast, the 21k head with the
AUC metric over 200 thresholds that the trainer ran on every step before it was removed. Timed with
``train_on_batch`` on in-memory batches, the three interleaved in one process (see
``benchmarks/timing.py``); prints ms per step and the ratios to the 1k head.

    python benchmarks/head_cost.py                       # B0, 64 px, batch 32
    python benchmarks/head_cost.py --variant s --image_size 128 --batch_size 16
"""

import argparse
import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report, timing  # noqa: E402
from datasets.tfrecord import IMAGENET21K_CLASSES  # noqa: E402
from efficientnetv2 import build_model  # noqa: E402
from efficientnetv2.train import compilation, optimizers  # noqa: E402
from hparams import config as config_lib  # noqa: E402


def compiled(args, num_classes, multi_label, auc=False):
    config = config_lib.Config()
    plan = types.SimpleNamespace(num_classes=num_classes, multi_label=multi_label)
    loss, metrics = compilation.loss_and_metrics(config, plan)
    if auc:  # What the trainer used to run every step on 21k data.
        metrics.append(keras.metrics.AUC(num_thresholds=200, multi_label=True, name="auc"))
    keras.utils.set_random_seed(0)
    model = build_model(args.variant, num_classes=num_classes, input_shape=(args.image_size, args.image_size, 3))
    optimizer = optimizers.make_optimizer(config.train, 1e-3)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def targets(rng, n, num_classes, labels_per_image):
    y = np.zeros((n, num_classes), "float32")
    for row in y:
        row[rng.choice(num_classes, labels_per_image, replace=False)] = 1.0
    return y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.uniform(0, 255, (n, args.image_size, args.image_size, 3)).astype("float32")
    data = {
        "1k head": (compiled(args, 1000, False), targets(rng, n, 1000, 1)),
        "21k head": (compiled(args, IMAGENET21K_CLASSES, True), targets(rng, n, IMAGENET21K_CLASSES, 2)),
        "21k head + AUC(200)": (compiled(args, IMAGENET21K_CLASSES, True, auc=True),
                                targets(rng, n, IMAGENET21K_CLASSES, 2)),
    }
    calls = {}
    for name, (model, y) in data.items():
        calls[name] = timing.compiled_step_calls(x, y, args.batch_size)["train"](model)
        calls[name]()  # Trace and compile.
    rep = report.Report("ImageNet-21k head", __file__, argv,
                        variant=args.variant, image_size=args.image_size, batch_size=args.batch_size,
                        steps_per_call=args.steps, repeats=args.repeats)
    info = rep.conditions
    cpu = {}
    times = timing.interleave(calls, args.repeats, cpu_times=cpu)
    timing.print_conditions(info)
    base = "1k head"
    rows = []
    for name in calls:
        params = data[name][0].count_params()
        rows.append([name, f"{params / 1e6:.1f}M", f"{timing.median(times[name]) / args.steps * 1e3:.1f}",
                     f"{timing.paired_ratio(times[base], times[name]):.2f}x",
                     f"{timing.paired_ratio(cpu[base], cpu[name]):.2f}x"])
    rep.table(["model", "parameters", "ms/step (wall)", "time vs 1k (wall)", "time vs 1k (CPU)"]).extend(rows)
    rep.print()
    return times


if __name__ == "__main__":
    main()
