"""Soak: N kill/restart cycles of a tiny deterministic training run, then compare with an
uninterrupted run.

    python benchmarks/soak.py --cycles 10

Each cycle starts the same command (tests/fault_worker.py), waits a random time, then sends either
SIGTERM (a preemption notice: the run must save within seconds and lose no completed step) or
SIGKILL (a dead machine: the steps since the last checkpoint are replayed, deterministically). After
the cycles the run is restarted until it completes, and its final checkpoint is compared, variable by
variable, with an uninterrupted run's.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402

from tests.test_faults import checkpoint_values  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def command(model_dir, args):
    return [sys.executable, "-m", "tests.fault_worker", model_dir, "none", str(args.epochs),
            str(args.steps_per_epoch)]


def run_until(model_dir, args, delay, sig):
    """Starts the run, sends ``sig`` after ``delay`` seconds; returns (exit code, START step, last STEP).

    The last step is the last one the run completed, in flight at the signal included: after a
    SIGTERM, the restart must begin there (nothing lost); after a SIGKILL it replays from the last
    checkpoint.
    """
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command(model_dir, args), cwd=ROOT, env=ENV, stdout=out,
                                   stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + delay
        while process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(sig)
        process.wait()
        out.seek(0)
        lines = out.read().splitlines()
    start, last = None, None
    for line in lines:
        kind, _, value = line.partition(" ")
        if kind == "START" and start is None:
            start = int(value)
        elif kind == "STEP":
            last = int(value)
    return process.returncode, start, last


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--steps_per_epoch", type=int, default=10)
    parser.add_argument("--min_delay", type=float,
                        help="seconds (default: 0.1 x the uninterrupted run's time, start-up included)")
    parser.add_argument("--max_delay", type=float, help="seconds (default: 0.3 x that time)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rep = report.Report("Faults", __file__, run=f"tiny EfficientNetV2 on synthetic data, {args.epochs} epochs x "
                        f"{args.steps_per_epoch} steps, deterministic ops")
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="soak-")
    straight, soaked = os.path.join(work, "straight"), os.path.join(work, "soaked")
    t0 = time.time()
    subprocess.run(command(straight, args), cwd=ROOT, env=ENV, check=True, capture_output=True)
    straight_s = time.time() - t0
    # Delays scaled to this machine's speed: each restarted run gets a fraction of the work done, so
    # that the cycles' signals land in start-up and training, not after the end.
    min_delay = args.min_delay if args.min_delay is not None else 0.1 * straight_s
    max_delay = args.max_delay if args.max_delay is not None else 0.3 * straight_s
    print(f"uninterrupted run: {straight_s:.0f} s; signals after {min_delay:.0f}-{max_delay:.0f} s", flush=True)

    total = args.epochs * args.steps_per_epoch
    cycles = {"SIGTERM": 0, "SIGKILL": 0}
    gaps = {"SIGTERM": 0, "SIGKILL": 0}  # steps completed before a signal that the restart redid
    previous = None  # (signal name, last completed step before the signal)

    def count_gap(start):
        if previous is not None and start is not None:
            gaps[previous[0]] += max(0, previous[1] - start)

    for cycle in range(args.cycles):
        name = rng.choice(["SIGTERM", "SIGKILL"])
        code, start, last = run_until(soaked, args, rng.uniform(min_delay, max_delay),
                                      getattr(signal, name))
        count_gap(start)
        if code == 0:
            print(f"cycle {cycle + 1}: the run completed before the signal", flush=True)
            break
        cycles[name] += 1
        if last is not None:
            previous = (name, last)
        print(f"cycle {cycle + 1}: {name} after step {last} (started at {start}), exit {code}", flush=True)
    final_code, start, last = run_until(soaked, args, 3600, signal.SIGKILL)
    count_gap(start)
    lost_after_sigterm, replayed_after_sigkill = gaps["SIGTERM"], gaps["SIGKILL"]
    a, b = checkpoint_values(straight)[1], checkpoint_values(soaked)[1]
    same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    table = rep.table(["cycles", "SIGTERM", "SIGKILL", "steps", "completed steps lost after SIGTERM",
                       "steps replayed after SIGKILL", "final weights bit-identical", "final run exit"])
    table.add(sum(cycles.values()), cycles["SIGTERM"], cycles["SIGKILL"], total, lost_after_sigterm,
              replayed_after_sigkill, same, final_code)
    rep.note(f"The uninterrupted run took {straight_s:.0f} s; signals after {min_delay:.0f}-{max_delay:.0f} s; "
             f"{time.time() - t0:.0f} s in all.")
    print(f"run folders in {work}")
    rep.print()


if __name__ == "__main__":
    main()
