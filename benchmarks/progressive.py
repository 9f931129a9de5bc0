"""Progressive learning, measured: the same model and epochs trained four ways, in one invocation.

    python benchmarks/progressive.py --data_dir ../shared/data/imagenette --plot progressive.png

(a) fixed: every epoch at the final image size with the final regularization;
(b) progressive size, regularization fixed at its final value;
(c) progressive size with adaptive regularization (the paper's method);
(d) (c) with a per-stage batch (``progressive.batch_scaling=pixels``): early, small-image stages
    train larger batches (as many pixels per step as the last stage, up to ``--max_batch_size``) at a
    learning rate scaled with the batch, in fewer steps: by the optimizer's rule (linear for
    RMSProp); (d'), mode ``batch_scaling_sqrt``, scales it with the square root of the batch instead.

The paper's EfficientNetV2-S setting (128 -> 300 px, eval 384, RandAugment 5 -> 15, dropout 0.1 -> 0.3,
4 stages) is scaled to a 2-core CPU: sizes by 128/300 (128 -> 56 px start, 300 -> 128 px end, eval
384 -> 160 px), a B0 of half width and depth, RandAugment 5 -> 10 in the reference's units (the
paper's start, which is also the policy's weakest magnitude in those units, and two thirds of its end:
the model is ~28x smaller than S and trains for a few epochs) with its two pixel-valued ops
(translate, cutout) scaled with the sizes (``data.randaug_pixel_scale`` = 128/300: at 56 px the
reference's pixels would shift by up to 50 px and cut out 40 px squares, most of the image, where the
paper's 128 px start loses a third), dropout 0.1 -> 0.3 and mixup off as for S.

Fairness on a shared machine: the runs are interleaved epoch by epoch (each call of
``training.train`` trains one epoch and returns; the next resumes from its checkpoint), so a change in
machine load hits all of them alike. The table's "train s" is the sum of the epochs' fit time as one
uninterrupted run spends it: the train step is traced once per stage (an uninterrupted run reuses it
for the stage's later epochs), so in an epoch that does not start a stage the first step's time
beyond the median step (the re-trace this benchmark's restart causes) is not counted; "measured s"
counts it, "wall s" adds model building and checkpoint restore.

``--arm keras`` measures the function a user calls instead (``progressive_fit.fit``):
``keras.applications.EfficientNetV2B0(weights=None, input_tensor=keras.Input((None, None, 3)),
classes=N)`` trained by it through the same stages as (c) (sizes, RandAugment, its ``top_dropout``
from ``--dropout_start`` to ``--dropout_end``) against the same model, from the same initial weights,
trained by a plain ``model.fit`` at ``--image_size`` with the final regularization, for the same epochs
and steps; both AdamW (one epoch of warmup, then cosine decay) on the same data function (the
project's decoder, crop, flip and RandAugment). Interleaved epoch by epoch in one process: the plain
run's epoch ``e`` runs inside the progressive call's ``on_epoch_end`` of epoch ``e``, so each run is
one uninterrupted call, traced once per stage as a user's would be. "train s" is the sum of the
epochs' ``fit`` time (epoch begin to end, traces included); evaluation is not counted.

    python benchmarks/progressive.py --arm keras --data_dir ../shared/data/imagenette

Curves: every ``--eval_every`` epochs (and after the last) each run is evaluated (EMA weights, the
eval size), outside the timed training; ``--plot FILE.png`` draws validation top-1 and training loss
against training time for every run, stage boundaries marked (needs matplotlib, an optional extra).
The numbers behind it are written to ``curves.json`` in the work folder.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from efficientnetv2.io.input_pipeline import input_pipeline  # noqa: E402
from efficientnetv2.train import progressive_fit, schedules, training  # noqa: E402
from hparams import config as config_lib  # noqa: E402


datasets = input_pipeline()

PAPER_END_SIZE = 300  # EfficientNetV2-S's last training size, which --image_size stands for.


class StepTimes(keras.callbacks.Callback):
    """The end time of every step of the epoch, to tell the first step's trace from the steps, and
    the epoch's seconds from its begin to its end."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start

    def first_step_excess(self):
        """Seconds the first step took beyond the median step: the train step's trace (and the
        pipeline's first batch)."""
        if len(self.ends) < 3:
            return 0.0
        steps = sorted(b - a for a, b in zip(self.ends, self.ends[1:]))
        return max(0.0, self.ends[0] - self.start - steps[len(steps) // 2])


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
        "data.randaug_pixel_scale": args.randaug_pixel_scale or args.image_size / PAPER_END_SIZE,
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
    if mode in ("batch_scaling", "batch_scaling_sqrt"):
        overrides.update({"progressive.batch_scaling": "pixels", "progressive.max_batch_size": args.max_batch_size,
                          "progressive.lr_batch_rule": "sqrt" if mode == "batch_scaling_sqrt" else "auto"})
        mode = "adaptive"
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


NAMES = {"fixed": "(a) fixed size, final regularization",
         "progressive_size": "(b) progressive size, fixed regularization",
         "adaptive": "(c) progressive size + adaptive regularization",
         "batch_scaling": "(d) (c) + per-stage batch size",
         "batch_scaling_sqrt": "(d') (d) with the learning rate ~ sqrt(batch)"}


def plot(curves, path, title=""):
    """Writes a PNG to ``path``: validation top-1 and training loss against training time, one line per
    run, its stage boundaries marked by dotted lines of its colour. ``curves``: ``{mode: [point]}``,
    each point a dict of ``train_s``, ``loss``, ``stage`` and (where evaluated) ``top1``."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional extra: only --plot needs it)
    except ImportError:
        sys.exit("--plot needs matplotlib, which is not installed: pip install matplotlib "
                 "(it is in the 'bench' extra: pip install -e '.[bench]')")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (top1_axes, loss_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (mode, points) in enumerate(curves.items()):
        color = f"C{index}"
        label = NAMES.get(mode, mode)
        evaluated = [p for p in points if p.get("top1") is not None]
        top1_axes.plot([p["train_s"] for p in evaluated], [100 * p["top1"] for p in evaluated],
                       "o-", color=color, label=label)
        loss_axes.plot([p["train_s"] for p in points], [p["loss"] for p in points], ".-", color=color, label=label)
        for before, after in zip(points, points[1:]):
            if after["stage"] != before["stage"]:
                for axes in (top1_axes, loss_axes):
                    axes.axvline(before["train_s"], color=color, linestyle=":", alpha=0.6)
    top1_axes.set(xlabel="training time (s, evaluation not counted)", ylabel="validation top-1 (%)",
                  title="validation top-1 (EMA weights)")
    loss_axes.set(xlabel="training time (s, evaluation not counted)", ylabel="training loss",
                  title="training loss per epoch (dotted: stage boundaries)")
    top1_axes.legend(loc="lower right", fontsize=8)
    for axes in (top1_axes, loss_axes):
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


KERAS_NAMES = {"plain": "keras.applications B0, plain fit at the final size",
               "progressive": "keras.applications B0, progressive_fit.fit"}


def keras_b0(num_classes, steps, args):
    """keras.applications' B0 from scratch (the same initial weights at every call), compiled with
    AdamW: one epoch of linear warmup to ``--keras_lr``, then cosine decay over the other epochs."""
    keras.utils.set_random_seed(args.seed)
    # include_top refuses input_shape=(None, None, 3); an input tensor of that shape is accepted.
    model = keras.applications.EfficientNetV2B0(weights=None, input_tensor=keras.Input((None, None, 3)),
                                                classes=num_classes)
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps * (args.epochs - 1)), warmup_target=args.keras_lr, warmup_steps=steps)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate), loss="categorical_crossentropy",
                  metrics=[keras.metrics.CategoricalAccuracy(name="top1")])
    return model


def keras_data(source, steps, args):
    """Both runs' data, as ``progressive_fit.fit`` takes a function: one epoch of ``steps`` batches
    from the project's pipeline (decode, random-resized crop, flip, RandAugment) at the size and
    magnitude asked for. The schedule's mixup is off (as for S), so the images are a plain tensor."""
    pixel_scale = args.randaug_pixel_scale or args.image_size / PAPER_END_SIZE

    def data(image_size, randaug_magnitude, mixup_alpha, epoch):
        return datasets.build_train_dataset(source, args.batch_size, image_size, randaug_magnitude=randaug_magnitude,
                                            randaug_pixel_scale=pixel_scale, seed=args.seed,
                                            epoch=epoch).repeat().take(steps)

    return data


class KerasArm:
    """The two keras.applications runs, interleaved: ``ProgressiveRun`` is a callback of the progressive
    ``fit``; at each of its epochs' end it records the epoch, then trains the plain run's same epoch."""

    def __init__(self, source, args):
        self.args = args
        self.steps = args.steps_per_epoch or datasets.steps_per_epoch(source, args.batch_size)
        self.data = keras_data(source, self.steps, args)
        self.eval_data = datasets.build_eval_dataset(source, 64, args.eval_size)
        self.models = {name: keras_b0(source.num_classes, self.steps, args) for name in KERAS_NAMES}
        # The plain run trains with the final regularization throughout.
        self.models["plain"].get_layer("top_dropout").rate = args.dropout_end
        self.schedule = progressive_fit.make_schedule(
            args.stages, (args.start_size, args.image_size), (args.randaug_start, args.randaug_end), (0.0, 0.0),
            (args.dropout_start, args.dropout_end))
        self.total = {name: 0.0 for name in KERAS_NAMES}
        self.pixels = {name: 0 for name in KERAS_NAMES}
        self.curves = {name: [] for name in KERAS_NAMES}

    def run(self):
        progressive_fit.fit(self.models["progressive"], self.data, self.args.epochs, self.schedule,
                            callbacks=[ProgressiveRun(self)], verbose=0)

    def plain_epoch(self, epoch):
        timer = StepTimes()
        history = self.models["plain"].fit(
            self.data(self.args.image_size, self.args.randaug_end, 0.0, epoch), initial_epoch=epoch,
            epochs=epoch + 1, callbacks=[timer], verbose=0, shuffle=False)  # the pipeline shuffles
        self.record("plain", epoch, timer.seconds, float(history.history["loss"][-1]), self.args.image_size,
                    self.args.randaug_end, self.args.dropout_end)

    def record(self, name, epoch, seconds, loss, image_size, randaug_magnitude, dropout_rate):
        """Adds the epoch's time, evaluates when due (not timed) and prints the epoch's line."""
        self.total[name] += seconds
        self.pixels[name] += image_size ** 2
        args = self.args
        top1 = None
        if epoch + 1 == args.epochs or (args.eval_every and (epoch + 1) % args.eval_every == 0):
            top1 = float(self.models[name].evaluate(self.eval_data, steps=args.eval_steps or None, verbose=0,
                                                    return_dict=True)["top1"])
            self.curves[name].append((self.total[name], top1))
        images_per_sec = self.steps * args.batch_size / seconds
        print(f"epoch {epoch + 1:2d} {name:11s} {image_size:4d} px  RandAugment {randaug_magnitude:4.1f}  dropout "
              f"{dropout_rate:.2f}  loss {loss:.3f}  train {seconds:6.1f} s ({images_per_sec:6.1f} img/s)"
              + (f"  val top-1 {top1:.3f}" if top1 is not None else ""), flush=True)


class ProgressiveRun(keras.callbacks.Callback):
    """The progressive run's epoch timer, and the plain run's turn after each of its epochs."""

    def __init__(self, arm):
        super().__init__()
        self.arm, self.timer = arm, StepTimes()

    def on_epoch_begin(self, epoch, logs=None):
        self.timer.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.timer.on_epoch_end(epoch)
        self.arm.record("progressive", epoch, self.timer.seconds, float(logs["loss"]), int(logs["image_size"]),
                        logs["randaug_magnitude"], logs["dropout_rate"])
        self.arm.plain_epoch(epoch)


def keras_arm(args):
    """``--arm keras``: keras.applications' B0 by ``progressive_fit.fit`` against a plain ``fit``."""
    source = datasets.get_source("auto", args.data_dir)
    rep = report.Report("Progressive learning for a keras.applications model", __file__,
                        runs="; ".join(KERAS_NAMES.values()) + " (interleaved epoch by epoch)",
                        evaluation=f"validation top-1 at {args.eval_size} px, not counted as training time")
    arm = KerasArm(source, args)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
          f"{arm.steps} steps of {args.batch_size} images per epoch", flush=True)
    arm.run()
    data_name = os.path.basename(os.path.normpath(args.data_dir))
    title = (f"keras.applications EfficientNetV2B0 (weights=None) on {data_name}: {args.epochs} epochs of "
             f"{arm.steps} steps, batch {args.batch_size}, AdamW (peak {args.keras_lr:g}); "
             f"progressive: {args.stages} stages, {args.start_size}->{args.image_size} px, RandAugment "
             f"{args.randaug_start:g}->{args.randaug_end:g}, dropout {args.dropout_start:g}->{args.dropout_end:g}; "
             f"plain: {args.image_size} px, RandAugment {args.randaug_end:g}, dropout {args.dropout_end:g}")
    table = rep.table(["run", "train s", "images/s", f"val top-1 ({args.eval_size} px)", "train time vs plain",
                       "top-1 vs plain"], title)
    images = args.epochs * arm.steps * args.batch_size
    final = {name: arm.curves[name][-1][1] for name in KERAS_NAMES}
    for name in ("plain", "progressive"):
        table.add(KERAS_NAMES[name], f"{arm.total[name]:.0f}", f"{images / arm.total[name]:.1f}",
                  f"{100 * final[name]:.1f}%", f"{arm.total[name] / arm.total['plain']:.2f}x",
                  f"{100 * (final[name] - final['plain']):+.1f} pts")
    rep.note(f"Pixels trained, progressive vs plain: {arm.pixels['progressive'] / arm.pixels['plain']:.2f}x "
             "(the time ratio if an image's cost were proportional to its pixels).")
    rep.print()
    if args.plot:
        report.plot_top1_against_time(args.plot, {KERAS_NAMES[n]: [(0, 0)] + arm.curves[n] for n in KERAS_NAMES},
                                      title)
        print(f"Curves drawn in {args.plot}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=report.IMAGENETTE)
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
    parser.add_argument("--randaug_start", type=float, default=5.0)
    parser.add_argument("--randaug_end", type=float, default=10.0)
    parser.add_argument("--randaug_pixel_scale", type=float, default=0.0,
                        help="RandAugment's translate and cutout pixels x this (0: --image_size / 300, the "
                        "benchmark's scale of the paper's sizes).")
    parser.add_argument("--dropout_start", type=float, default=0.1)
    parser.add_argument("--dropout_end", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_batch_size", type=int, default=256, help="(d)'s largest global batch.")
    parser.add_argument("--modes", default="fixed,progressive_size,adaptive,batch_scaling")
    parser.add_argument("--eval_every", type=int, default=3, help="Evaluate every this many epochs (0: at the "
                        "end only); the time is not counted as training time.")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="Write the curves as a PNG.")
    parser.add_argument("--arm", choices=("trainer", "keras"), default="trainer",
                        help="trainer: the trainer's runs of --modes; keras: keras.applications' B0 by "
                        "progressive_fit.fit against a plain fit at --image_size (see above).")
    parser.add_argument("--keras_lr", type=float, default=1e-3, help="--arm keras: AdamW's peak learning rate.")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)

    if not os.path.isdir(args.data_dir):
        sys.exit(f"no data folder at {args.data_dir}")
    if args.arm == "keras":
        return keras_arm(args)
    work = args.work_dir or tempfile.mkdtemp(prefix="progressive-bench-")
    modes = args.modes.split(",")
    configs = {m: make_config(args, m) for m in modes}
    stats = {m: {"train_s": 0.0, "measured_s": 0.0, "wall_s": 0.0, "images": 0} for m in modes}
    curves = {m: [] for m in modes}
    rep = report.Report("Progressive learning on real photos", __file__,
                        runs=", ".join(NAMES.get(m, m) for m in modes) + " (interleaved epoch by epoch)")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; runs in {work}", flush=True)
    for epoch in range(args.epochs):
        for mode in modes:
            start = time.perf_counter()
            step_times = StepTimes()
            result = training.train(configs[mode], os.path.join(work, mode), verbose=0, max_epochs=1,
                                    callbacks=[step_times])
            wall = time.perf_counter() - start
            logs, plan = result["logs"], result["plan"]
            params = plan.stages[int(logs["stage"]) - 1]
            images = plan.stage_steps(params) * params.batch_size
            measured = images / logs["images_per_sec"]
            # One uninterrupted run traces its train step once per stage (progressive.py); this
            # benchmark's one call per epoch traces it every epoch, which is not counted again.
            stage_start = schedules.starts_stage(epoch, args.epochs, len(plan.stages))
            trace = 0.0 if stage_start else step_times.first_step_excess()
            stats[mode]["wall_s"] += wall
            stats[mode]["measured_s"] += measured
            stats[mode]["train_s"] += measured - trace
            stats[mode]["images"] += images
            point = {"epoch": epoch + 1, "train_s": stats[mode]["train_s"], "loss": logs["loss"],
                     "stage": params.stage + 1, "image_size": params.image_size, "batch_size": params.batch_size}
            last = epoch + 1 == args.epochs
            if last or (args.eval_every and (epoch + 1) % args.eval_every == 0):
                point["top1"] = training.evaluate(configs[mode], os.path.join(work, mode))["top1"]
                stats[mode]["top1"] = point["top1"]
            curves[mode].append(point)
            print(f"epoch {epoch + 1:2d} {mode:17s} {int(logs['image_size']):4d} px  batch {params.batch_size:4d}  "
                  f"RandAugment {logs['randaug_magnitude']:4.1f}  dropout {logs['dropout_rate']:.2f}  loss "
                  f"{logs['loss']:.3f}  top1(train) {logs.get('top1', float('nan')):.3f}  "
                  f"{logs['images_per_sec']:6.1f} img/s  train {measured - trace:6.1f} s (re-trace {trace:4.1f} s "
                  f"not counted)  wall {wall:6.1f} s"
                  + (f"  val top-1 {point['top1']:.3f}" if "top1" in point else ""), flush=True)
    with open(os.path.join(work, "curves.json"), "w") as f:
        json.dump(curves, f, indent=1)
    base = stats[modes[0]]
    print()
    title = (f"EfficientNetV2-B0 (width {args.width}, depth {args.depth}) on {os.path.basename(os.path.normpath(args.data_dir))}: "
             f"{args.epochs} epochs, {args.stages} stages, batch {args.batch_size} ((d) up to {args.max_batch_size}), "
             f"sizes {args.start_size}->{args.image_size} px, eval {args.eval_size} px (EMA weights), "
             f"TF {tf.__version__}, {os.cpu_count()} cores")
    table = rep.table(["run", "train s", "measured s", "wall s", "images/s",
                       f"val top-1 (EMA, {args.eval_size} px)", "train time vs (a)", "top-1 vs (a)"], title)
    for mode in modes:
        s = stats[mode]
        table.add(NAMES.get(mode, mode), f"{s['train_s']:.0f}", f"{s['measured_s']:.0f}", f"{s['wall_s']:.0f}",
                  f"{s['images'] / s['train_s']:.1f}", f"{100 * s['top1']:.1f}%",
                  f"{s['train_s'] / base['train_s']:.2f}x", f"{100 * (s['top1'] - base['top1']):+.1f} pts")
    # The time each run would take if an image cost in proportion to its pixels: the floor for a
    # progressive schedule unless small images train cheaper per pixel than large ones.
    pixels = {mode: sum(p["image_size"] ** 2 for p in curves[mode]) for mode in modes}
    rep.note("Pixels trained vs (a) (the time ratio if an image's cost were proportional to its pixels): "
             + ", ".join(f"{NAMES.get(m, m).split()[0]} {pixels[m] / pixels[modes[0]]:.2f}x" for m in modes)
             + ". \"train s\" counts the train step's trace once per stage, as an uninterrupted run does; "
             "\"measured s\" includes this benchmark's re-trace in every epoch.")
    rep.print()
    if args.plot:
        plot(curves, args.plot, title)
        print(f"Curves drawn in {args.plot}")


if __name__ == "__main__":
    main()
