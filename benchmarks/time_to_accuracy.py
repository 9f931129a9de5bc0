"""Time to accuracy on a folder of photos: a plain keras.applications run vs this project's small-data recipe.

    python benchmarks/time_to_accuracy.py --data_dir ../shared/data/imagenette --plot time_to_accuracy.png

(a) baseline, what a user would otherwise write: ``keras.applications.EfficientNetV2B0(weights=None)``
    and a plain ``fit``: random-resized crop + flip, AdamW (Keras' default weight decay) with one epoch of
    linear warmup and cosine decay, softmax cross-entropy, 128 px, batch 32, 5 epochs;
(b) ours: ``main.py``'s trainer with ``hparams/small_data.yaml`` (progressive learning with adaptive
    regularization), the command the README recommends for a user's own photos, for the same 5 epochs
    (``--hparams train.epochs=5``; the recipe ends at 128 px).

Both read the same folder through the same decoder (the baseline gets our random-resized crop and
flip with RandAugment and mixup off: that is its whole augmentation, and it is no slower than a plain
``tf.image`` pipeline). After every epoch both are evaluated on the whole validation split at the
same image size (``--eval_size``, default the baseline's 128 px) with the same center crop; ours with
its EMA weights, as its trainer evaluates. Training time is the sum of the epochs' ``fit`` time
(epoch begin to epoch end, including each epoch's first-step trace); evaluation, model building,
checkpoint restore and save are not counted (the "wall s" column shows ours with them).

Fairness on a shared machine: the two runs are interleaved epoch by epoch in one process (ours: each
call of ``training.train`` trains one epoch and returns, the next resumes from its checkpoint), so a
change in load hits both alike. The result is the training time each needs to first reach the
baseline's final top-1, and their ratio (the goal: ours <= 0.5x).
"""

import argparse
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
from efficientnetv2.train import training  # noqa: E402
from hparams import config as config_lib  # noqa: E402

datasets = input_pipeline()


class EpochTimer(keras.callbacks.Callback):
    """Seconds from each epoch's begin to its end (``fit``'s own work: steps and the first trace)."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


class Baseline:
    """keras.applications EfficientNetV2B0 from scratch, trained by a plain ``fit`` one epoch per call."""

    def __init__(self, source, args):
        self.source, self.args = source, args
        self.steps = args.steps_per_epoch or datasets.steps_per_epoch(source, args.baseline_batch_size)
        keras.utils.set_random_seed(args.seed)
        # include_top builds a fixed input size; the same head on a size-free backbone evaluates at any size.
        backbone = keras.applications.EfficientNetV2B0(weights=None, include_top=False, input_shape=(None, None, 3),
                                                       pooling="avg")
        x = keras.layers.Dropout(0.2)(backbone.output)
        outputs = keras.layers.Dense(source.num_classes, activation="softmax", name="predictions")(x)
        self.model = keras.Model(backbone.input, outputs)
        warmup = self.steps  # one epoch
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, self.steps * args.baseline_epochs - warmup), warmup_target=args.baseline_lr,
            warmup_steps=warmup)
        self.model.compile(optimizer=keras.optimizers.AdamW(schedule), loss="categorical_crossentropy",
                           metrics=[keras.metrics.CategoricalAccuracy(name="top1")])
        self.epoch = 0

    def train_epoch(self):
        data = datasets.build_train_dataset(self.source, self.args.baseline_batch_size, self.args.baseline_size,
                                            seed=self.args.seed, epoch=self.epoch).repeat().take(self.steps)
        timer = EpochTimer()
        history = self.model.fit(data, initial_epoch=self.epoch, epochs=self.epoch + 1, steps_per_epoch=self.steps,
                                 callbacks=[timer], verbose=0)
        self.epoch += 1
        return timer.seconds, float(history.history["loss"][-1]), self.steps * self.args.baseline_batch_size

    def evaluate(self):
        data = datasets.build_eval_dataset(self.source, 64, self.args.eval_size)
        results = self.model.evaluate(data, steps=self.args.eval_steps or None, verbose=0, return_dict=True)
        return float(results["top1"])


class Ours:
    """This project's trainer with the recommended config, one epoch per call (resuming its checkpoint)."""

    def __init__(self, args, work):
        self.config = config_lib.load_config(data_dir=args.data_dir, hparams_file=args.hparams_file,
                                             overrides=args.hparams, model=args.model)
        config_lib.apply_overrides(self.config, {
            "eval.image_size": str(args.eval_size),
            "train.seed": str(args.seed),
            **({"train.steps_per_epoch": str(args.steps_per_epoch)} if args.steps_per_epoch else {}),
            **({"eval.steps": str(args.eval_steps)} if args.eval_steps else {}),
        }, source="time_to_accuracy")
        self.model_dir = os.path.join(work, "ours")
        self.epochs = self.config.train.epochs
        self.wall = 0.0

    def train_epoch(self):
        timer = EpochTimer()
        start = time.perf_counter()
        result = training.train(self.config, self.model_dir, verbose=0, max_epochs=1, callbacks=[timer])
        self.wall += time.perf_counter() - start
        logs = result["logs"]
        self.last_logs = logs
        return timer.seconds, float(logs["loss"]), result["plan"].steps_per_epoch * result["plan"].global_batch

    def evaluate(self):
        return float(training.evaluate(self.config, self.model_dir)["top1"])


def time_to_reach(curve, target):
    """Training seconds at the end of the first epoch whose top-1 >= target, or None. curve: [(s, top1)]."""
    for seconds, top1 in curve:
        if top1 >= target:
            return seconds
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=report.IMAGENETTE)
    parser.add_argument("--work_dir", default=None, help="Run folders (default: a temp folder).")
    parser.add_argument("--model", default="b0", help="Our variant (main.py's --model).")
    parser.add_argument("--hparams_file", default=os.path.join(config_lib.HPARAMS_DIR, "small_data.yaml"))
    parser.add_argument("--hparams", default="train.epochs=5", help="Overrides of ours, as main.py's --hparams.")
    parser.add_argument("--baseline_epochs", type=int, default=5)
    parser.add_argument("--baseline_size", type=int, default=128)
    parser.add_argument("--baseline_batch_size", type=int, default=32)
    parser.add_argument("--baseline_lr", type=float, default=1e-3)
    parser.add_argument("--eval_size", type=int, default=128, help="Both runs are evaluated at this size.")
    parser.add_argument("--steps_per_epoch", type=int, default=0, help="Both runs; 0: the whole training split.")
    parser.add_argument("--eval_steps", type=int, default=0, help="0: the whole validation split.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="Write top-1 against training time to this PNG.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    if not os.path.isdir(args.data_dir):
        sys.exit(f"no data folder at {args.data_dir}")
    work = args.work_dir or tempfile.mkdtemp(prefix="time-to-accuracy-")
    source = datasets.get_source("auto", args.data_dir)
    runs = {"baseline": Baseline(source, args), "ours": Ours(args, work)}
    epochs = {"baseline": args.baseline_epochs, "ours": runs["ours"].epochs}
    curves = {name: [] for name in runs}
    total = {name: 0.0 for name in runs}
    rep = report.Report("Time to accuracy vs keras.applications", __file__, argv,
                        evaluation=f"the whole validation split at {args.eval_size} px after every epoch, "
                                   "not counted as training time")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; ours in {work}", flush=True)
    for epoch in range(max(epochs.values())):
        for name, run in runs.items():
            if epoch >= epochs[name]:
                continue
            seconds, loss, images = run.train_epoch()
            start = time.perf_counter()
            top1 = run.evaluate()
            total[name] += seconds
            curves[name].append((total[name], top1))
            extra = ""
            if name == "ours":
                logs = run.last_logs
                extra = (f"  {int(logs['image_size'])} px  RandAugment {logs['randaug_magnitude']:.1f}  "
                         f"dropout {logs['dropout_rate']:.2f}  lr {logs['learning_rate']:.2e}")
            print(f"epoch {epoch + 1:2d} {name:8s} loss {loss:.3f}  val top-1 {100 * top1:5.1f}%  "
                  f"train {seconds:6.1f} s ({images / seconds:6.1f} img/s)  total {total[name]:7.1f} s  "
                  f"eval {time.perf_counter() - start:5.1f} s{extra}", flush=True)
    target = curves["baseline"][-1][1]
    reach = {name: time_to_reach(curves[name], target) for name in runs}
    table = rep.table(["run", "epochs", "train s", "val top-1 after each epoch", "final val top-1",
                       "best val top-1", f"train s to reach {100 * target:.1f}%"])
    for name in runs:
        best = max(t for _, t in curves[name])
        when = f"{reach[name]:.0f}" if reach[name] is not None else "not reached"
        if reach[name] is not None and name != "baseline":
            when += f" ({reach[name] / reach['baseline']:.2f}x)"
        table.add(name, epochs[name], f"{total[name]:.0f}", ", ".join(f"{100 * t:.1f}" for _, t in curves[name]),
                  f"{100 * curves[name][-1][1]:.1f}%", f"{100 * best:.1f}%", when)
    rep.note(f"Ours' wall time with model building, checkpoint restore and save: {runs['ours'].wall:.0f} s.")
    rep.print()
    if args.plot:
        data_name = os.path.basename(os.path.normpath(args.data_dir))
        report.plot_top1_against_time(
            args.plot,
            {f"keras.applications B0, {args.baseline_size} px, AdamW": [(0, 0)] + curves["baseline"],
             f"ours ({os.path.basename(args.hparams_file)})": [(0, 0)] + curves["ours"]},
            f"{data_name}: validation top-1 at {args.eval_size} px vs training time ({os.cpu_count()} CPU cores)",
            hline=target, hline_label="baseline's final top-1")
        print(f"plot written to {args.plot}")
    return {"curves": curves, "reach": reach, "target": target}


if __name__ == "__main__":
    main()
