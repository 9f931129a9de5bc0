"""Training and inference throughput of EfficientNetV2 on one accelerator, JAX backend, bf16, XLA.

For each variant: trains on one synthetic batch kept on the device (no input pipeline in the
measurement) at the variant's training size (S 300, M and L 380 px), with mixed_bfloat16, RMSprop
(the paper's settings) and one XLA-compiled, state-donating train step; then runs inference at the
evaluation size (S 384, M and L 480). The batch is the largest that fits: doubling from
``--start_batch`` until the device runs out of memory, then one try half-way back (or only the
sizes of ``--batch_sizes``). Prints img/s, step time, achieved TFLOP/s and the model FLOP
utilization (MFU) against a bf16 matmul peak measured here:

- model FLOPs per image: 2 x the multiply-adds of ``efficientnetv2.flops.count_flops`` (convs,
  depthwise, SE, dense), times 3 for a training step (forward, and backward for inputs and weights);
- peak: a ``--peak_matmul_size`` square bf16 matmul, jitted, repeated, in FLOP/s.

Imports only keras, jax, numpy and ``efficientnetv2`` (no TensorFlow); run it under JAX:

    KERAS_BACKEND=jax python benchmarks/gpu_train_throughput.py                # S
    KERAS_BACKEND=jax python benchmarks/gpu_train_throughput.py --variants s,m,l
    KERAS_BACKEND=jax python benchmarks/gpu_train_throughput.py --variants s --image_size 32 \\
        --batch_sizes 2 --steps 2 --blocks r1_k3_s1_e1_i8_o8_c1 --head_filters 32  # a smoke test
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX takes 75% of GPU memory by default; the largest batch deserves nearly all of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.94")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from efficientnetv2 import build_model, get_variant  # noqa: E402
from efficientnetv2.flops import count_flops  # noqa: E402


def _is_out_of_memory(error):
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def measure_peak_flops(size, repeats=10):
    """FLOP/s of a jitted ``size`` x ``size`` bf16 matmul (float32 accumulation), best of 3."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = [matmul(a, b) for _ in range(repeats)]
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


class Benchmark:
    """One model with its jitted train and inference steps (stateless Keras API under JAX)."""

    def __init__(self, model, num_classes):
        self.model = model
        self.num_classes = num_classes
        self.optimizer = keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
        self.optimizer.build(model.trainable_variables)
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._train = jax.jit(self._train_step, donate_argnums=(0,))
        self._infer = jax.jit(self._infer_step)

    def state(self):
        """Copies of the variables' values: the train step donates (frees) the arrays it gets."""
        return tuple(
            [jnp.copy(v.value) for v in variables]
            for variables in (
                self.model.trainable_variables,
                self.model.non_trainable_variables,
                self.optimizer.variables,
            )
        )

    def _train_step(self, state, x, y):
        trainable, non_trainable, optimizer_vars = state

        def loss_fn(trainable, non_trainable):
            logits, non_trainable = self.model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return self.loss(y, logits), non_trainable

        (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_vars)

    def _infer_step(self, trainable, non_trainable, x):
        logits, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)
        return logits

    def _batch(self, batch_size, image_size):
        key = jax.random.key(batch_size)
        x = jax.random.uniform(key, (batch_size, image_size, image_size, 3), jnp.float32, 0, 255)
        y = jax.random.randint(key, (batch_size,), 0, self.num_classes)
        return x, y

    def time_train(self, batch_size, image_size, steps, warmup):
        """Seconds per step after ``warmup`` steps (the first compiles); raises on OOM."""
        x, y = self._batch(batch_size, image_size)
        state = self.state()
        start = time.perf_counter()
        loss, state = self._train(state, x, y)
        loss.block_until_ready()
        compile_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            loss, state = self._train(state, x, y)
        loss.block_until_ready()
        start = time.perf_counter()
        for _ in range(steps):
            loss, state = self._train(state, x, y)
        loss.block_until_ready()
        step_s = (time.perf_counter() - start) / steps
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"training loss is {float(loss)}")
        return step_s, compile_s

    def time_infer(self, batch_size, image_size, steps, warmup):
        x, _ = self._batch(batch_size, image_size)
        trainable, non_trainable, _ = self.state()
        start = time.perf_counter()
        self._infer(trainable, non_trainable, x).block_until_ready()
        compile_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            out = self._infer(trainable, non_trainable, x)
        out = None
        start = time.perf_counter()
        outs = [self._infer(trainable, non_trainable, x) for _ in range(steps)]
        jax.block_until_ready(outs)
        return (time.perf_counter() - start) / steps, compile_s


def largest_batch(run, candidates, backoff=True):
    """Runs ``run(batch)`` for growing ``candidates`` until one runs out of memory.

    Returns ``(batch, result)`` of the largest that fitted (after, with ``backoff``, one try
    half-way between it and the first that did not), or ``(None, None)`` when none fitted.
    """
    best, result, failed = None, None, None
    for batch in sorted(candidates):
        try:
            result = run(batch)
            best = batch
            print(f"#   batch {batch}: fits", flush=True)
        except Exception as error:  # JAX raises its runtime error type for OOM
            if not _is_out_of_memory(error):
                raise
            print(f"#   batch {batch}: out of memory", flush=True)
            failed = batch
            break
    if backoff and best is not None and failed is not None and failed - best > 8:
        middle = (best + failed) // 2 // 8 * 8
        if middle > best:
            try:
                result, best = run(middle), middle
                print(f"#   batch {middle}: fits", flush=True)
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                print(f"#   batch {middle}: out of memory", flush=True)
    return best, result


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="s", help="comma-separated, e.g. s,m,l")
    parser.add_argument("--image_size", type=int, help="training size (default: the variant's)")
    parser.add_argument("--eval_image_size", type=int, help="default: the variant's eval size")
    parser.add_argument("--batch_sizes", help="comma-separated sizes to try instead of doubling")
    parser.add_argument("--start_batch", type=int, default=32)
    parser.add_argument("--max_batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing (1 compiles)")
    parser.add_argument("--precision", default="mixed_bfloat16", choices=["mixed_bfloat16", "float32"])
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--width", type=float, help="override the variant's width multiplier")
    parser.add_argument("--depth", type=float, help="override the variant's depth multiplier")
    parser.add_argument("--blocks", help="override the variant's block strings (comma-separated)")
    parser.add_argument("--head_filters", type=int, default=1280)
    parser.add_argument("--peak_matmul_size", type=int,
                        help="side of the bf16 matmul measuring the peak (default 8192, 1024 on CPU)")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    if keras.backend.backend() != "jax":
        raise SystemExit(f"run under KERAS_BACKEND=jax (this is {keras.backend.backend()!r})")
    keras.config.set_dtype_policy(args.precision)
    device = jax.devices()[0]
    print(f"# keras {keras.__version__}, jax {jax.__version__}, device {device.device_kind} "
          f"({device.platform}, {jax.device_count()} device(s)), precision {args.precision}, XLA jit")
    peak_size = args.peak_matmul_size or (1024 if device.platform == "cpu" else 8192)
    peak = measure_peak_flops(peak_size)
    print(f"# measured peak: {peak / 1e12:.2f} TFLOP/s (bf16 matmul {peak_size}x{peak_size})",
          flush=True)
    if args.batch_sizes:
        candidates = [int(b) for b in args.batch_sizes.split(",") if b]
    else:
        candidates, b = [], args.start_batch
        while b <= args.max_batch:
            candidates.append(b)
            b *= 2
    modes = [m for m in args.modes.split(",") if m]
    rows = []
    for name in [v for v in args.variants.split(",") if v]:
        spec = get_variant(name)
        sizes = {
            "train": args.image_size or spec.train_size,
            "infer": args.eval_image_size or args.image_size or spec.eval_size,
        }
        overrides = dict(width=args.width, depth=args.depth, blocks=args.blocks,
                         head_filters=args.head_filters)
        model = build_model(spec, num_classes=args.num_classes, input_shape=(None, None, 3),
                            **overrides)
        bench = Benchmark(model, args.num_classes)
        for mode in modes:
            size = sizes[mode]
            macs = count_flops(spec, size, num_classes=args.num_classes, **overrides)
            flops_per_image = 2 * macs * (3 if mode == "train" else 1)
            timer = bench.time_train if mode == "train" else bench.time_infer
            print(f"# {spec.name} {mode} at {size}px: {macs / 1e6:.1f} M multiply-adds/image; "
                  f"finding the largest batch", flush=True)
            batch, result = largest_batch(
                lambda b: timer(b, size, args.steps, args.warmup), candidates
            )
            if batch is None:
                print(f"{spec.name} {mode} {size}px: no batch size fits")
                continue
            step_s, compile_s = result
            images_s = batch / step_s
            achieved = images_s * flops_per_image
            print(
                f"{spec.name} {mode} {size}px batch {batch}: {images_s:.1f} img/s, step "
                f"{step_s * 1000:.1f} ms, {achieved / 1e12:.3f} TFLOP/s, MFU "
                f"{100 * achieved / peak:.1f}% (first step with compile {compile_s:.1f} s)",
                flush=True,
            )
            rows.append((spec.name, mode, size, batch, images_s, step_s, achieved, compile_s))
    print()
    print("| variant | mode | px | batch | img/s | step ms | TFLOP/s | MFU | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, mode, size, batch, images_s, step_s, achieved, compile_s in rows:
        print(f"| {name} | {mode} | {size} | {batch} | {images_s:.1f} | {step_s * 1000:.1f} | "
              f"{achieved / 1e12:.3f} | {100 * achieved / peak:.1f}% | {compile_s:.0f} |")
    return rows


if __name__ == "__main__":
    main()
