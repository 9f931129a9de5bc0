"""The ONNX conversion's memory per variant: the figures behind docs/export.md's table and the
early refusal in ``efficientnetv2/io/onnx_export.py`` (``estimated_peak_bytes``).

For each variant, in a process of its own (so that one variant's leftovers do not count against
the next): the inference model at ``--size`` with ``--classes`` outputs (random weights: memory does
not depend on their values) is written as ONNX by ``onnx_export.write_onnx``, which converts in a
child process. Printed: parameters, the child's peak resident memory (VmHWM), the exporting process's
peak, the estimate, the conversion's wall time and the file's size.

    python benchmarks/onnx_memory.py
    python benchmarks/onnx_memory.py --variants b0,s --size 224

A variant whose conversion is killed for memory is reported as such and the others go on.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402

GIB = 2**30
ALL = "b0,b1,b2,b3,s,m,l,xl"


def measure(variant, size, classes, folder):
    """In this process: {params, peak (child), parent_peak, seconds, file_bytes} or {error}."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: PLC0415

    from efficientnetv2 import build_model  # noqa: PLC0415
    from efficientnetv2.io import onnx_export  # noqa: PLC0415

    logits = build_model(variant, num_classes=classes, input_shape=(size, size, 3), dropout_rate=0.0)
    model = keras.Model(logits.input, keras.layers.Softmax(dtype="float32")(logits.output))
    path = os.path.join(folder, f"{variant}.onnx")
    start = time.perf_counter()
    try:
        peak = onnx_export.write_onnx(model, path, size, f"EfficientNetV2-{variant.upper()}")
    except onnx_export.OnnxExportError as e:
        return {"params": model.count_params(), "error": str(e)}
    seconds = time.perf_counter() - start
    size_bytes = os.path.getsize(path)
    os.remove(path)
    return {"params": model.count_params(), "peak": peak, "parent_peak": onnx_export._peak_rss(),  # noqa: SLF001
            "seconds": seconds, "file_bytes": size_bytes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=ALL, help=f"comma-separated (default {ALL})")
    parser.add_argument("--size", type=int, default=224, help="image size of the exported model")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # Internal: measure one variant, print JSON.
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(measure(args.one, args.size, args.classes, folder)), flush=True)
        return

    from efficientnetv2.io import onnx_export  # noqa: PLC0415

    out = report.Report(f"ONNX conversion memory at {args.size} px", __file__, argv, size=f"{args.size} px",
                        classes=args.classes, converter=f"tf2onnx, opset {onnx_export.OPSET}, in a child process")
    rows = out.table(["variant", "parameters", "conversion peak", "estimate", "exporting process peak",
                      "conversion s", "model.onnx"])
    for variant in args.variants.split(","):
        child = subprocess.run([sys.executable, __file__, "--one", variant, "--size", str(args.size),
                                "--classes", str(args.classes)], capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        if child.returncode or not lines:
            rows.add(variant.upper(), "-", f"failed: {(child.stderr.strip().splitlines() or ['?'])[-1][:200]}",
                     "-", "-", "-", "-")
            continue
        result = json.loads(lines[-1])
        params = f"{result['params'] / 1e6:.1f}M"
        estimate = f"{onnx_export.estimated_peak_bytes(result['params']) / GIB:.1f} GiB"
        if "error" in result:
            rows.add(variant.upper(), params, result["error"], estimate, "-", "-", "-")
            continue
        rows.add(variant.upper(), params, f"{result['peak'] / GIB:.1f} GiB", estimate,
                 f"{result['parent_peak'] / GIB:.1f} GiB", f"{result['seconds']:.0f}",
                 f"{result['file_bytes'] / 2**20:.0f} MiB")
    out.note("Peaks are VmHWM (peak resident memory) of each process; the conversion runs in a child "
             "of the exporting process, which holds the model and its frozen graph meanwhile.")
    out.print()


if __name__ == "__main__":
    main()
