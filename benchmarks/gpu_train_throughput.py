"""Training and inference throughput of EfficientNetV2 on one accelerator, JAX backend, bf16, XLA.

For each variant: trains on one synthetic batch kept on the device (no input pipeline in the
measurement) at the variant's training size (S 300, M and L 380 px), with mixed_bfloat16, RMSprop
(the paper's settings) and one XLA-compiled, state-donating train step; then runs inference at the
evaluation size (S 384, M and L 480). The batch is the largest that fits (or only the sizes of
``--batch_sizes``):

- on a device that reports its memory (GPU, TPU): XLA's memory analysis of the step compiled at
  ``--start_batch`` gives the bytes per image beyond the model and optimizer state; the batch that
  fills ``--memory_headroom`` of the free memory is tried, then 10% less each time it runs out
  of memory. Two compilations instead of a dozen: each costs tens of seconds on a GPU;
- otherwise (CPU): doubling from ``--start_batch`` until it runs out of memory, then one try
  half-way back.

Prints img/s, step time, achieved TFLOP/s and the model FLOP utilization (MFU) against a bf16
matmul peak measured here:

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

from benchmarks import report  # noqa: E402
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


def _spec(array):
    return jax.ShapeDtypeStruct(array.shape, array.dtype)


def _nbytes(tree):
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def compiled_bytes(compiled):
    """Device bytes a compiled step needs (arguments + outputs - donated + temporaries), or None
    where the backend does not say (XLA:CPU reports no temporaries)."""
    stats = compiled.memory_analysis()
    if stats is None or not stats.temp_size_in_bytes:
        return None
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def batch_that_fits(probe_bytes, state_bytes, probe_batch, free_bytes, headroom, multiple=8):
    """The batch whose step fills ``headroom`` of ``free_bytes``, from one compiled probe.

    ``probe_bytes`` is what the step needs at ``probe_batch``; ``state_bytes`` the part that does
    not grow with the batch (weights, optimizer state). Rounded down to ``multiple``; 0 when not
    even the state fits.
    """
    per_image = max(probe_bytes - state_bytes, 1) / probe_batch
    room = free_bytes * headroom - state_bytes
    return max(int(room / per_image) // multiple * multiple, 0)


class Benchmark:
    """One model with its jitted train and inference steps (stateless Keras API under JAX).

    Steps are compiled explicitly (``lower(...).compile()``) so that the compilation is timed on
    its own and its memory analysis is there before anything runs.
    """

    def __init__(self, model, num_classes):
        self.model = model
        self.num_classes = num_classes
        self.optimizer = keras.optimizers.RMSprop(1e-4, rho=0.9, momentum=0.9, epsilon=1e-3)
        self.optimizer.build(model.trainable_variables)
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._steps = {
            "train": jax.jit(self._train_step, donate_argnums=(0,)),
            "infer": jax.jit(self._infer_step),
        }

    def _values(self):
        return tuple(
            [v.value for v in variables]
            for variables in (
                self.model.trainable_variables,
                self.model.non_trainable_variables,
                self.optimizer.variables,
            )
        )

    def state(self):
        """Copies of the variables' values: the train step donates (frees) the arrays it gets."""
        return jax.tree.map(jnp.copy, self._values())

    def _arguments(self, mode, state, batch_size, image_size, concrete):
        """The step's arguments (arrays, or with ``concrete=False`` their shapes) for one batch."""
        x_shape = (batch_size, image_size, image_size, 3)
        if concrete:
            key = jax.random.key(batch_size)
            x = jax.random.uniform(key, x_shape, jnp.float32, 0, 255)
            y = jax.random.randint(key, (batch_size,), 0, self.num_classes)
        else:
            x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
            y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        if mode == "train":
            return state, x, y
        return state[0], state[1], x

    def state_bytes(self, mode):
        """Bytes of the arguments that do not grow with the batch."""
        values = self._values()
        return _nbytes(values if mode == "train" else values[:2])

    def compile(self, mode, batch_size, image_size):
        """(compiled step, seconds it took to compile)."""
        state = jax.tree.map(_spec, self._values())
        arguments = self._arguments(mode, state, batch_size, image_size, concrete=False)
        start = time.perf_counter()
        compiled = self._steps[mode].lower(*arguments).compile()
        return compiled, time.perf_counter() - start

    def time(self, mode, batch_size, image_size, steps, warmup):
        """(seconds per step after ``warmup`` steps, compile seconds); raises on out of memory."""
        compiled, compile_s = self.compile(mode, batch_size, image_size)
        arguments = self._arguments(mode, self.state(), batch_size, image_size, concrete=True)
        if mode == "train":
            state, x, y = arguments
            for _ in range(max(warmup, 1)):
                loss, state = compiled(state, x, y)
            loss.block_until_ready()
            start = time.perf_counter()
            for _ in range(steps):
                loss, state = compiled(state, x, y)
            loss.block_until_ready()
            step_s = (time.perf_counter() - start) / steps
            if not np.isfinite(float(loss)):
                raise FloatingPointError(f"training loss is {float(loss)}")
            return step_s, compile_s
        for _ in range(warmup):
            compiled(*arguments).block_until_ready()
        start = time.perf_counter()
        outputs = [compiled(*arguments) for _ in range(steps)]
        jax.block_until_ready(outputs)
        return (time.perf_counter() - start) / steps, compile_s

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


def _free_device_bytes(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def estimated_candidates(bench, mode, image_size, probe_batch, device, headroom, max_batch):
    """Batch sizes to try, largest first, from the memory analysis of one compiled probe; None
    where the device or backend reports no memory figures."""
    free = _free_device_bytes(device)
    if free is None:
        return None
    compiled, compile_s = bench.compile(mode, probe_batch, image_size)
    needed = compiled_bytes(compiled)
    del compiled
    if needed is None:
        return None
    state = bench.state_bytes(mode)
    estimate = min(batch_that_fits(needed, state, probe_batch, free, headroom), max_batch)
    gib = 2.0**30
    print(f"#   memory: batch {probe_batch} needs {needed / gib:.2f} GiB ({state / gib:.2f} GiB "
          f"weights and optimizer state; compiled in {compile_s:.0f} s); {free / gib:.1f} GiB free "
          f"-> batch {estimate} fills {headroom:.0%}", flush=True)
    candidates = []
    batch = estimate
    while batch >= 8 and len(candidates) < 6:
        candidates.append(batch)
        batch = int(batch * 0.9) // 8 * 8
    return candidates


_OUT_OF_MEMORY = object()


def _attempt(run, batch):
    """``run(batch)``, or ``_OUT_OF_MEMORY`` when the device ran out of memory; says which."""
    try:
        result = run(batch)
    except Exception as error:  # JAX raises its runtime error type for OOM
        if not _is_out_of_memory(error):
            raise
        print(f"#   batch {batch}: out of memory", flush=True)
        return _OUT_OF_MEMORY
    print(f"#   batch {batch}: fits", flush=True)
    return result


def first_that_fits(run, candidates):
    """``run(batch)`` for ``candidates`` in order until one does not run out of memory:
    ``(batch, result)``, or ``(None, None)`` when none fitted."""
    for batch in candidates:
        result = _attempt(run, batch)
        if result is not _OUT_OF_MEMORY:
            return batch, result
    return None, None


def largest_batch(run, candidates, backoff=True):
    """Runs ``run(batch)`` for growing ``candidates`` until one runs out of memory.

    Returns ``(batch, result)`` of the largest that fitted (after, with ``backoff``, one try
    half-way between it and the first that did not), or ``(None, None)`` when none fitted.
    """
    best, result, failed = None, None, None
    for batch in sorted(candidates):
        outcome = _attempt(run, batch)
        if outcome is _OUT_OF_MEMORY:
            failed = batch
            break
        best, result = batch, outcome
    if backoff and best is not None and failed is not None and failed - best > 8:
        middle = (best + failed) // 2 // 8 * 8
        if middle > best:
            outcome = _attempt(run, middle)
            if outcome is not _OUT_OF_MEMORY:
                best, result = middle, outcome
    return best, result


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="s", help="comma-separated, e.g. s,m,l")
    parser.add_argument("--image_size", type=int, help="training size (default: the variant's)")
    parser.add_argument("--eval_image_size", type=int, help="default: the variant's eval size")
    parser.add_argument("--batch_sizes", help="comma-separated sizes to try instead of doubling")
    parser.add_argument("--start_batch", type=int, default=32,
                        help="first batch of the doubling, or the probe of the memory estimate")
    parser.add_argument("--memory_headroom", type=float, default=0.9,
                        help="fraction of the free device memory the estimated batch may fill")
    parser.add_argument("--max_batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
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
    rep = report.Report("Training and inference throughput on an accelerator", __file__, argv,
                        precision=args.precision, compile="XLA (jax.jit)")
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
            "train": args.image_size or spec.image_size.end,
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
            print(f"# {spec.name} {mode} at {size}px: {macs / 1e6:.1f} M multiply-adds/image; "
                  f"finding the largest batch", flush=True)

            def run(batch, mode=mode, size=size):
                return bench.time(mode, batch, size, args.steps, args.warmup)

            estimated = None if args.batch_sizes else estimated_candidates(
                bench, mode, size, args.start_batch, device, args.memory_headroom, args.max_batch)
            if estimated:
                batch, result = first_that_fits(run, estimated)
            else:
                batch, result = largest_batch(run, candidates)
            if batch is None:
                print(f"{spec.name} {mode} {size}px: no batch size fits")
                continue
            step_s, compile_s = result
            images_s = batch / step_s
            achieved = images_s * flops_per_image
            print(
                f"{spec.name} {mode} {size}px batch {batch}: {images_s:.1f} img/s, step "
                f"{step_s * 1000:.1f} ms, {achieved / 1e12:.3f} TFLOP/s, MFU "
                f"{100 * achieved / peak:.1f}% (compile {compile_s:.1f} s)",
                flush=True,
            )
            rows.append((spec.name, mode, size, batch, images_s, step_s, achieved, compile_s))
    table = rep.table(["variant", "mode", "px", "batch", "img/s", "step ms", "TFLOP/s", "MFU", "compile s"])
    for name, mode, size, batch, images_s, step_s, achieved, compile_s in rows:
        table.add(name, mode, size, batch, f"{images_s:.1f}", f"{step_s * 1000:.1f}", f"{achieved / 1e12:.3f}",
                  f"{100 * achieved / peak:.1f}%", f"{compile_s:.0f}", progress=False)
    rep.note(f"Measured peak: {peak / 1e12:.2f} TFLOP/s (bf16 matmul {peak_size}x{peak_size}); MFU is against it.")
    rep.print()
    return rows


if __name__ == "__main__":
    main()
