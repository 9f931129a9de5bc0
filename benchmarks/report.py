"""The markdown block a benchmark prints last, which is what goes into docs/benchmarks.md.

Every benchmark ends with a `Report`: its title, the command that ran it (the script's path relative
to the repository, so the block names no folder of the machine it ran on), the date, the machine
(``timing.conditions()``: versions, CPU, cores, load before and after), its tables and a few notes.
A rerun's block replaces the section of docs/benchmarks.md, so figures are copied, never retyped.
"""

import datetime
import os
import shlex
import sys

from benchmarks import timing

__all__ = ["Report", "command", "IMAGENETTE", "plot_top1_against_time"]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real photos the benchmarks default to (see ../shared/data/imagenette's README).
IMAGENETTE = os.path.normpath(os.path.join(_REPO, "..", "shared", "data", "imagenette"))


def command(script, argv=None):
    """``python <script> <argv>`` as a reader types it at the repository's root (``argv``: the
    arguments, ``sys.argv[1:]`` when None)."""
    script = os.path.abspath(script)
    args = sys.argv[1:] if argv is None else argv
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and os.path.abspath(getattr(main, "__file__", "")) == script:
        return shlex.join(["python", "-m", spec.name, *args])  # Run as `python -m benchmarks.x`.
    if script.startswith(_REPO + os.sep):
        script = os.path.relpath(script, _REPO)
    else:
        script = os.path.basename(script)
    return shlex.join(["python", script, *args])


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


class Report:
    """Collects a benchmark's tables and notes and prints them as one markdown block.

    ``script`` is the benchmark's ``__file__`` and ``argv`` its arguments (``sys.argv[1:]`` when
    None). ``conditions`` are what the figures depend on beyond the command (sizes, model, what is timed);
    the machine's (``timing.conditions()``) come first, taken when the report is made: make it before
    the measurement, so that the load before and after frames the run. ``table()`` returns a list
    to ``add()`` rows to; each row is also printed as it comes, behind ``#``, for a long run.
    """

    def __init__(self, title, script, argv=None, **conditions):
        self.title = title
        self.command = command(script, argv)
        self.started = _now()
        self.conditions = timing.conditions(**conditions)
        self.tables = []
        self.notes = []

    def table(self, headers, caption=None):
        rows = _Rows(len(headers))
        self.tables.append((caption, list(headers), rows))
        return rows

    def note(self, text):
        self.notes.append(text)

    def markdown(self):
        load = "load average (1, 5, 15 min)"
        lines = [f"### {self.title}", "", f"`{self.command}`", "",
                 f"- date: {self.started} to {_now()} UTC"]
        for key, value in self.conditions.items():
            if key == load:
                value = f"{value} before, {timing.conditions()[load]} after"
            lines.append(f"- {key}: {value}")
        for caption, headers, rows in self.tables:
            lines.append("")
            if caption:
                lines += [caption, ""]
            lines.append(timing.markdown_table(headers, rows))
        if self.notes:
            lines.append("")
            lines += self.notes
        return "\n".join(lines)

    def print(self):
        print("\n" + self.markdown(), flush=True)


class _Rows(list):
    def __init__(self, width):
        super().__init__()
        self.width = width

    def add(self, *cells, progress=True):
        if len(cells) != self.width:
            raise ValueError(f"a row of {len(cells)} cells for a table of {self.width} columns")
        self.append(cells)
        if progress:
            print("# " + " | ".join(str(c) for c in cells), flush=True)


def plot_top1_against_time(path, curves, title, xlabel="training time (s)", hline=None, hline_label=None):
    """Writes a PNG of validation top-1 against time: ``curves`` is {label: [(seconds, top1)]},
    ``hline`` an optional top-1 to draw across. Needs matplotlib (``pip install -e ".[bench]"``)."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional extra: only --plot needs it)
    except ImportError:
        sys.exit("--plot needs matplotlib, which is not installed: pip install -e \".[bench]\"")
    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        axes.plot([s for s, _ in curve], [100 * t for _, t in curve], marker="o", label=label)
    if hline is not None:
        axes.axhline(100 * hline, color="gray", linestyle="--", linewidth=1, label=hline_label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
