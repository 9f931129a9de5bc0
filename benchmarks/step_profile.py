"""Where a train step's time goes on this CPU, per image size and batch: the fixed cost that makes
small-image progressive stages less than proportionally faster.

Builds ``benchmarks/progressive.py``'s model (B0 at half width and depth, 10 classes, batch-norm
momentum 0.9, stochastic depth 0.1), compiled as the trainer compiles it (RMSProp with EMA, which
here also averages the batch-norm statistics, and L2 on kernels), and

- times the compiled train step (``fit`` over in-memory batches, after a traced warm-up) at every
  ``--image_sizes`` x ``--batch_sizes``, interleaved in one process: ms per step and per image;
- profiles ``--profile_steps`` steps at each ``--profile`` size x batch with TensorFlow's profiler and
  sums the ops' time by op type (thread time: ops on the two cores overlap, so the sum exceeds the
  step's wall time), with each type's count per step and time per op.

    python benchmarks/step_profile.py
    python benchmarks/step_profile.py --image_sizes 56,128 --batch_sizes 64 --profile 56x64
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report, timing  # noqa: E402
from efficientnetv2 import build_model  # noqa: E402
from efficientnetv2.train import optimizers  # noqa: E402
from hparams import config as config_lib  # noqa: E402


def compiled_model(image_size):
    keras.utils.set_random_seed(0)
    train_config = config_lib.Config().train
    train_config.ema_decay = 0.999
    model = build_model("b0", num_classes=10, width=0.5, depth=0.5, input_shape=(image_size, image_size, 3),
                        bn_momentum=0.9, drop_path_rate=0.1)
    optimizer = optimizers.make_optimizer(train_config, 1e-3)
    optimizers.add_weight_decay(model, train_config.weight_decay)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy()])
    optimizer.build(model.trainable_variables)
    optimizers.average_moving_statistics(model, optimizer)
    return model


def batches(image_size, batch_size, count=4):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size * count, image_size, image_size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch_size * count), 10)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().repeat().prefetch(2)


def op_profile(model, data, steps, logdir):
    """{op type: (thread ms per step, ops per step)} over ``steps`` profiled steps."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    total, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                kind = name.split(":")[-1].strip()
                if name.count(":") != 1 or kind.startswith("__inference"):
                    continue  # Not an op ("name:Type"), or the whole step function.
                total[kind] += event.duration_ps / 1e9 / steps
                count[kind] += 1 / steps
    return {kind: (ms, count[kind]) for kind, ms in total.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_sizes", default="56,80,104,128")
    parser.add_argument("--batch_sizes", default="64,256")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="56x64,128x64", help="size x batch pairs to profile ('' for none)")
    parser.add_argument("--profile_steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="op types listed per profile")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.image_sizes.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    models = {size: compiled_model(size) for size in sizes}
    calls = {}
    for size in sizes:
        for batch in batch_sizes:
            data = batches(size, batch)
            models[size].fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # Trace.
            calls[(size, batch)] = (lambda m, d: lambda: m.fit(d, steps_per_epoch=args.steps, epochs=1,
                                                               verbose=0))(models[size], data)
    rep = report.Report("Train step by image size and batch",
                        __file__, argv,
                        model="b0 width 0.5 depth 0.5, 10 classes, RMSProp + EMA", steps_per_call=args.steps,
                        repeats=args.repeats)
    info = rep.conditions
    times = timing.interleave(calls, args.repeats)
    timing.print_conditions(info)
    rows = []
    for (size, batch), t in times.items():
        step = timing.median(t) / args.steps
        ref = timing.median(times[(max(sizes), batch)]) / args.steps
        rows.append([size, batch, f"{step * 1e3:.0f}", f"{step / batch * 1e3:.2f}",
                     f"{(max(sizes) / size) ** 2:.2f}x", f"{ref / step:.2f}x"])
    rep.table(["px", "batch", "ms/step", "ms/image", "fewer pixels than the largest",
               "faster than the largest (same batch)"]).extend(rows)
    for pair in filter(None, args.profile.split(",")):
        size, batch = (int(v) for v in pair.split("x"))
        model = models.get(size) or compiled_model(size)
        data = batches(size, batch)
        model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
        with tempfile.TemporaryDirectory() as logdir:
            profile = op_profile(model, data, args.profile_steps, logdir)
        thread_ms = sum(ms for ms, _ in profile.values())
        ops = sum(n for _, n in profile.values())
        caption = (f"Op profile at {size} px, batch {batch}: {thread_ms:.0f} ms of op (thread) time and "
                   f"{ops:.0f} ops per step.")
        top = sorted(profile.items(), key=lambda kv: -kv[1][0])[:args.top]
        rep.table(["op type", "ms/step", "share", "ops/step", "us/op"], caption).extend(
            [kind, f"{ms:.1f}", f"{ms / thread_ms:.0%}", f"{n:.0f}", f"{ms / n * 1e3:.0f}"] for kind, (ms, n) in top)
    rep.print()


if __name__ == "__main__":
    main()
