"""Which TensorFlow-backend options train fastest on this CPU: XLA (``jit_compile``) and bf16.

Builds one model per combination of ``jit_compile`` off/on and ``float32``/``mixed_bfloat16`` (a
small real variant: B0 at 128 px by default), compiles each with RMSprop, and times training on the
same in-memory batches with ``train_on_batch`` (the compiled train step), alternating the
combinations within each repetition; then, likewise, ``predict_on_batch``. Prints img/s and the
speed relative to float32 without XLA (from wall and from process CPU time), with the CPU's bf16
flags (AVX512-BF16 and AMX-BF16 are what make bf16 fast on a CPU). XLA on CPU compiles for minutes:
``--jit_compile off`` skips it.

    python benchmarks/cpu_options.py
    python benchmarks/cpu_options.py --variant s --image_size 128 --batch_size 8
"""

import argparse
import itertools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report, timing  # noqa: E402
from efficientnetv2 import build_model  # noqa: E402


def build(variant, image_size, precision, jit_compile, num_classes=1000):
    keras.config.set_dtype_policy(precision)
    try:
        model = build_model(variant, num_classes=num_classes, input_shape=(image_size, image_size, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    model.optimizer.build(model.trainable_variables)  # else TensorFlow traces the step twice
    return model


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per combination")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--jit_compile", default="off,on", help="which XLA settings to time")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("cpu_options.py measures the TensorFlow backend's options")
    modes = [m for m in args.modes.split(",") if m]
    rep = report.Report(
        "CPU options: precision and XLA", __file__, argv,
        variant=args.variant, image_size=args.image_size, batch_size=args.batch_size,
        steps_per_call=args.steps, repeats=args.repeats,
        TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (on for x86)"),
    )
    info = rep.conditions
    timing.print_conditions(info)
    start = time.perf_counter()
    combos = list(itertools.product(
        [p for p in args.precisions.split(",") if p],
        [{"off": False, "on": True}[j] for j in args.jit_compile.split(",") if j],
    ))
    names = [f"{precision}, XLA {'on' if jit else 'off'}" for precision, jit in combos]
    models = {name: build(args.variant, args.image_size, p, j) for name, (p, j) in zip(names, combos)}

    rng = np.random.default_rng(0)
    images = args.batch_size * args.steps
    x = rng.uniform(0, 255, (images, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, 1000, (images,)).astype("int32")
    calls = timing.compiled_step_calls(x, y, args.batch_size)
    results = {}
    for mode in modes:
        fns = {name: calls[mode](model) for name, model in models.items()}
        first = timing.interleave(fns, 1)
        print(f"# {mode} first calls (trace/compile): "
              + ", ".join(f"{n} {t[0]:.0f} s" for n, t in first.items()), flush=True)
        cpu = {}
        times = timing.interleave(fns, args.repeats, cpu_times=cpu)
        results[mode] = {
            name: (images / timing.median(t), timing.paired_ratio(t, times[names[0]]),
                   timing.paired_ratio(cpu[name], cpu[names[0]]))
            for name, t in times.items()
        }
        if mode == "train":
            for name, model in models.items():
                loss = model.evaluate(x, y, batch_size=args.batch_size, verbose=0)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"{name}: loss {loss} after training")
        best = max(results[mode], key=lambda n: results[mode][n][0])
        print(f"# {mode}: fastest is {best}", flush=True)
    print(f"# total {time.perf_counter() - start:.0f} s; load average after: "
          f"{timing.conditions()['load average (1, 5, 15 min)']}")
    headers = ["precision, XLA"]
    for mode in modes:
        headers += [f"{mode} img/s", f"{mode} vs {names[0]} (wall / CPU time)"]
    rows = []
    for name in names:
        row = [name]
        for mode in modes:
            images_s, ratio, cpu_ratio = results[mode][name]
            row += [f"{images_s:.1f}", f"{ratio:.2f}x / {cpu_ratio:.2f}x"]
        rows.append(row)
    rep.table(headers).extend(rows)
    rep.print()
    return results


if __name__ == "__main__":
    main()
