"""The paper's Fused-MBConv ablation (EfficientNetV2, Table 3) with this package's layers.

The network is EfficientNet-B4: EfficientNet(V1)-B0's seven stages of MBConv blocks (SE 0.25,
kernels 3 and 5) scaled by width 1.4 and depth 1.8 (32 blocks, 1792-wide head). Four versions, as in
the paper: Fused-MBConv in no stage, in stages 1-3, 1-5 and 1-7. A fused stage keeps its kernel size,
expansion and strides and drops SE (the paper's Fused-MBConv in EfficientNetV2 has none; with SE
the parameter counts come out above the paper's). ``--fused_kernel_size 3`` makes every fused conv
3x3 instead (the paper's "stages 1-3" figures, 20.0M and 7.5B, fit that better: stage 3 has 5x5
kernels).

For each version it prints parameters, multiply-adds per image (``efficientnetv2.flops``) at the
run's image size and at 380 px (B4's), and training (``train_on_batch``, RMSprop) and inference
(``predict_on_batch``) img/s on in-memory batches, all four models timed in one process, alternating
within each repetition, with speeds relative to the unfused network from wall and from process CPU
time (steadier on a shared machine), plus the paper's figures for reference. Needs only keras and numpy with the backend of ``KERAS_BACKEND``:

    python benchmarks/fused_ablation.py                                   # TensorFlow, CPU
    KERAS_BACKEND=jax python benchmarks/fused_ablation.py --image_size 224 --batch_size 32
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report, timing  # noqa: E402
from efficientnetv2 import block_strings, build_model  # noqa: E402
from efficientnetv2.flops import count_flops  # noqa: E402

# EfficientNet (V1) B0's stages; B4 scales them by width 1.4 and depth 1.8.
EFFICIENTNET_B0_BLOCKS = (
    "r1_k3_s1_e1_i32_o16_se0.25",
    "r2_k3_s2_e6_i16_o24_se0.25",
    "r2_k5_s2_e6_i24_o40_se0.25",
    "r3_k3_s2_e6_i40_o80_se0.25",
    "r3_k5_s1_e6_i80_o112_se0.25",
    "r4_k5_s2_e6_i112_o192_se0.25",
    "r1_k3_s1_e6_i192_o320_se0.25",
)
B4_WIDTH, B4_DEPTH, B4_SIZE = 1.4, 1.8, 380

# PAPER.md section 3: params, FLOPs, top-1, TPUv3 img/s/core, V100 img/s/gpu.
PAPER = {
    0: ("19.3M", "4.5B", "82.8%", 262, 155),
    3: ("20.0M", "7.5B", "83.1%", 362, 216),
    5: ("43.4M", "21.3B", "83.1%", 327, 223),
    7: ("132.0M", "34.4B", "81.7%", 254, 206),
}


def ablation_blocks(fused_stages, fused_kernel_size=None):
    """B0's block strings with stages ``1..fused_stages`` made Fused-MBConv (without SE)."""
    blocks = []
    for number, string in enumerate(EFFICIENTNET_B0_BLOCKS, start=1):
        args = block_strings.decode(string)
        if number <= fused_stages:
            args = block_strings.BlockArgs(
                repeats=args.repeats,
                kernel_size=fused_kernel_size or args.kernel_size,
                strides=args.strides,
                expand_ratio=args.expand_ratio,
                in_filters=args.in_filters,
                out_filters=args.out_filters,
                se_ratio=0.0,
                fused=True,
            )
        blocks.append(block_strings.encode(args))
    return blocks


def build(fused_stages, image_size, fused_kernel_size=None, num_classes=1000):
    blocks = ablation_blocks(fused_stages, fused_kernel_size)
    model = build_model(
        "b0",
        num_classes=num_classes,
        include_preprocessing=False,
        input_shape=(image_size, image_size, 3),
        blocks=blocks,
        width=B4_WIDTH,
        depth=B4_DEPTH,
        dropout_rate=0.4,  # B4's
        name=f"efficientnet-b4-fused-1-{fused_stages}" if fused_stages else "efficientnet-b4",
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)  # else TensorFlow traces the step twice
    flops = {
        size: count_flops("b0", size, num_classes=num_classes, blocks=blocks, width=B4_WIDTH,
                          depth=B4_DEPTH)
        for size in (image_size, B4_SIZE)
    }
    return model, flops


def _label(fused_stages):
    return "none" if fused_stages == 0 else f"1-{fused_stages}"


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model and mode")
    parser.add_argument("--fused_stages", default="0,3,5,7")
    parser.add_argument("--fused_kernel_size", type=int, help="default: keep each stage's kernel")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--modes", default="train,infer")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    keras.config.set_dtype_policy(args.precision)
    fused = [int(s) for s in args.fused_stages.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    rep = report.Report(
        "Fused-MBConv ablation", __file__, argv,
        network=f"EfficientNet-B4 stages (V1 B0 x width {B4_WIDTH}, depth {B4_DEPTH})",
        fused_kernel=args.fused_kernel_size or "each stage's own",
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps_per_call=args.steps,
        repeats=args.repeats,
        precision=args.precision,
    )
    info = rep.conditions
    timing.print_conditions(info)
    start = time.perf_counter()
    models, flops = {}, {}
    for n in fused:
        models[n], flops[n] = build(n, args.image_size, args.fused_kernel_size)
        print(f"# built {_label(n)}: {_trainable(models[n]):,} trainable parameters", flush=True)

    rng = np.random.default_rng(0)
    images = args.batch_size * args.steps
    x = rng.normal(0, 1, (images, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, 1000, (images,)).astype("int32")
    calls = timing.compiled_step_calls(x, y, args.batch_size)
    speed = {mode: {} for mode in modes}
    for mode in modes:
        fns = {n: calls[mode](models[n]) for n in fused}
        first = timing.interleave(fns, 1)  # traces / compiles
        print(f"# {mode}: first calls (compile) "
              + ", ".join(f"{_label(n)} {t[0]:.0f} s" for n, t in first.items()), flush=True)
        cpu = {}
        times = timing.interleave(fns, args.repeats, cpu_times=cpu)
        for n in fused:
            speed[mode][n] = images / timing.median(times[n])
        base = fused[0]
        rel = {n: timing.paired_ratio(times[n], times[base]) for n in fused}
        speed[mode]["rel"] = rel
        speed[mode]["cpu"] = {n: timing.paired_ratio(cpu[n], cpu[base]) for n in fused}
        print(f"# {mode}: " + ", ".join(
            f"{_label(n)} {speed[mode][n]:.1f} img/s ({rel[n]:.2f}x wall, "
            f"{speed[mode]['cpu'][n]:.2f}x CPU time)" for n in fused), flush=True)
    print(f"# total {time.perf_counter() - start:.0f} s; load average after: "
          f"{timing.conditions()['load average (1, 5, 15 min)']}")

    headers = ["fused stages", "params (trainable)", f"GMACs @{args.image_size}",
               f"GMACs @{B4_SIZE}"]
    for mode in modes:
        headers += [f"{mode} img/s", f"{mode} vs {_label(fused[0])} (wall / CPU time)"]
    headers += ["paper params", "paper FLOPs", "paper top-1", "paper TPUv3 img/s/core",
                "paper V100 img/s"]
    rows = []
    for n in fused:
        row = [_label(n), f"{_trainable(models[n]) / 1e6:.1f}M",
               f"{flops[n][args.image_size] / 1e9:.2f}", f"{flops[n][B4_SIZE] / 1e9:.1f}"]
        for mode in modes:
            row += [f"{speed[mode][n]:.1f}",
                    f"{speed[mode]['rel'][n]:.2f}x / {speed[mode]['cpu'][n]:.2f}x"]
        row += list(PAPER.get(n, ("",) * 5))
        rows.append(row)
    rep.table(headers).extend(rows)
    rep.print()
    return rows


if __name__ == "__main__":
    main()
