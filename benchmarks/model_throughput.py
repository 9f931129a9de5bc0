"""Training and inference speed of our EfficientNetV2 against keras.applications', in one process.

For each variant and image size, builds our model and keras.applications' (same variant, classes,
batch, image size, precision, head dropout 0.2 and stochastic depth 0.2 as keras.applications'
defaults, input preprocessing inside both), compiles both with RMSprop (the paper's rho 0.9,
momentum 0.9, epsilon 1e-3) and sparse cross-entropy, and times, alternating the two models within
each repetition:

- train: ``model.train_on_batch`` on each of ``--steps`` in-memory batches (the compiled train
  function alone),
- fit: ``model.fit`` over the same batches (one epoch; Keras' data pipeline and callbacks included,
  which on a busy 2-core machine makes its times much noisier),
- call: ``model.predict_on_batch`` on each batch (the compiled predict function alone),
- predict: ``model.predict`` over the same batches (Keras' data pipeline included).

It prints img/s of both (medians over repetitions of wall time) and ours/keras, the median of the
per-repetition speed ratios, from wall time and from process CPU time (the latter is less disturbed
by other processes on a shared machine), after a warm-up call that traces and compiles both (its
time is printed as "first call").

    python benchmarks/model_throughput.py                       # S at 128 and 224 px, float32
    python benchmarks/model_throughput.py --variant s,b0 --precision mixed_bfloat16
    KERAS_BACKEND=jax python benchmarks/model_throughput.py --image_sizes 128
"""

import argparse
import gc
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report, timing  # noqa: E402
from efficientnetv2 import build_model  # noqa: E402
from efficientnetv2.io.keras_applications import build_keras_application  # noqa: E402

# keras.applications.EfficientNetV2*'s defaults, given to ours too so both do the same work.
KERAS_DROPOUT_RATE = 0.2
KERAS_DROP_CONNECT_RATE = 0.2


def _compile(model, jit_compile):
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    # Made now, the optimizer's slots are not created inside the first traced train step, which
    # would make TensorFlow trace it twice (the first call then takes about half as long).
    model.optimizer.build(model.trainable_variables)
    return model


def build_pair(variant, image_size, jit_compile, num_classes=1000):
    """Our model and keras.applications', compiled alike, under the current dtype policy."""
    shape = (image_size, image_size, 3)
    ours = build_model(
        variant,
        num_classes=num_classes,
        input_shape=shape,
        dropout_rate=KERAS_DROPOUT_RATE,
        drop_path_rate=KERAS_DROP_CONNECT_RATE,
    )
    theirs = build_keras_application(variant, num_classes=num_classes, input_shape=shape)
    if ours.count_params() != theirs.count_params():
        raise ValueError(
            f"{variant}: {ours.count_params():,} parameters here, {theirs.count_params():,} in "
            "keras.applications; the comparison would not be like for like"
        )
    return {"ours": _compile(ours, jit_compile), "keras": _compile(theirs, jit_compile)}


def measure(models, image_size, batch_size, steps, repeats, modes, num_classes=1000, seed=0):
    """``{mode: {"wall": {name: [s, ...]}, "cpu": {...}, "first": {name: s}}}`` for the models.

    ``repeats`` maps each mode to its number of timed calls per model.
    """
    rng = np.random.default_rng(seed)
    n = batch_size * steps
    x = rng.uniform(0, 255, (n, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, num_classes, (n,)).astype("int32")

    steps = timing.compiled_step_calls(x, y, batch_size)

    def fit(model):
        return lambda: model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)

    def predict(model):
        return lambda: model.predict(x, batch_size=batch_size, verbose=0)

    make = {"fit": fit, "train": steps["train"], "predict": predict, "call": steps["infer"]}
    results = {}
    for mode in modes:
        fns = {name: make[mode](model) for name, model in models.items()}
        first = timing.interleave(fns, 1)  # traces and compiles
        cpu = {}
        wall = timing.interleave(fns, repeats[mode], cpu_times=cpu)
        results[mode] = {"wall": wall, "cpu": cpu, "first": {k: t[0] for k, t in first.items()}}
    return results


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="s", help="comma-separated variants (default s)")
    parser.add_argument("--image_sizes", default="128,224")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed train/fit calls per model")
    parser.add_argument("--infer_repeats", type=int, default=10,
                        help="timed call/predict calls per model (cheaper, so more of them)")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--jit_compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--modes", default="train,fit,call",
                        help="of train, fit, call, predict")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    keras.config.set_dtype_policy(args.precision)
    variants = [v for v in args.variant.split(",") if v]
    sizes = [int(s) for s in args.image_sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rep = report.Report(
        "Model speed vs keras.applications",
        __file__, argv,
        precision=args.precision,
        batch_size=args.batch_size,
        steps_per_call=args.steps,
        repeats=f"{args.repeats} (train, fit), {args.infer_repeats} (call, predict)",
        jit_compile=args.jit_compile,
    )
    info = rep.conditions
    timing.print_conditions(info)
    rows = []
    for variant in variants:
        for size in sizes:
            start = time.perf_counter()
            models = build_pair(variant, size, jit)
            repeats = {"train": args.repeats, "fit": args.repeats, "call": args.infer_repeats,
                       "predict": args.infer_repeats}
            results = measure(models, size, args.batch_size, args.steps, repeats, modes)
            images = args.batch_size * args.steps
            for mode in modes:
                wall, cpu, first = (results[mode][k] for k in ("wall", "cpu", "first"))
                ours = images / timing.median(wall["ours"])
                theirs = images / timing.median(wall["keras"])
                ratio = timing.paired_ratio(wall["ours"], wall["keras"])
                cpu_ratio = timing.paired_ratio(cpu["ours"], cpu["keras"])
                rows.append([
                    variant, size, mode, args.batch_size, args.precision,
                    models["ours"].jit_compile, f"{ours:.1f}", f"{theirs:.1f}", f"{ratio:.3f}",
                    f"{cpu_ratio:.3f}", f"{first['ours']:.0f} / {first['keras']:.0f}",
                ])
                per_rep = ", ".join(f"{k / o:.2f}" for o, k in zip(wall["ours"], wall["keras"]))
                print(
                    f"{variant} {size}px {mode}: ours {ours:.1f} img/s, keras.applications "
                    f"{theirs:.1f} img/s, ours/keras {ratio:.3f} wall, {cpu_ratio:.3f} CPU time "
                    f"(per-repetition wall ratios {per_rep})",
                    flush=True,
                )
            print(f"# {variant} {size}px done in {time.perf_counter() - start:.0f} s", flush=True)
            del models, results
            keras.backend.clear_session()
            gc.collect()
    rep.table(["variant", "px", "mode", "batch", "precision", "XLA", "ours img/s",
               "keras.applications img/s", "ours/keras (wall)", "ours/keras (CPU time)",
               "first call s (ours / keras)"]).extend(rows)
    rep.print()
    return rows


if __name__ == "__main__":
    main()
