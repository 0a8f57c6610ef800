"""Benchmark: does every phase of the limited-access protocol grow linearly with the number of images?

    python -m benchmarks.scaling [--classes 100 300 1000] [--out runs/scaling]
        [--config configs/imagenet-synthetic.yaml] [--set KEY.PATH=VALUE ...] [--table-only]

Runs the config (`unlearn bench`) once per class count with the same images per class, so a dataset of
300 classes holds 3x the images of one of 100, and 1000 classes 10x. Per class count, under --out:
`data/c<N>` (the shards), `c<N>/models` (the original), `c<N>/run` (records and report), `c<N>/timing.json`
(prepare seconds and the bench's wall time) and `c<N>/bench.log`. A rerun skips what is already there:
shards, the original, and every recorded method (the bench resumes); `--table-only` only rebuilds the table.

The table (printed, and `scaling.md`, `scaling.csv`, `scaling.png` under --out): per phase and class count,
the seconds and images/s (the phase's own images: records' `images`, or train images x epochs for the
original's training), and the growth of the phase's time against the dataset's images, relative to the
smallest class count: (seconds / base seconds) / (images / base images). 1.0 is linear; below it, fixed
costs are being amortised; above WORSE_THAN_LINEAR the phase grows worse than linearly with the data.
The dataset's images, not the phase's own, because a phase's images mix costly and cheap ones in
proportions that change with size: finetune's images are its training pass plus a BatchNorm refresh
capped at 50 batches, half of them at 100 classes and an eighth at 1000, so its images/s falls while
its seconds grow exactly with the data. Phases whose own images grew by another factor are listed.

Phases: prepare (the conversion into shards, timed here), train (the original model's epochs), and from
the bench's one Ray Train fit: startup, data, unlearn of each method, eval (mean per evaluated row) and the
fit's total wall time; then the bench's wall time (original training and both Ray start-ups included).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time

from pipeline import storage
from pipeline.data.shards import META_FILE, read_meta
from pipeline.results.records import ResultRecord, load_records

DEFAULT_CONFIG = "configs/imagenet-synthetic.yaml"
DEFAULT_CLASSES = (100, 300, 1000)
# Growth above this is reported as worse than linear: timing noise on a quiet laptop stays well under 30 %.
WORSE_THAN_LINEAR = 1.3
# Other processes keeping more than this share of the cores busy during a step (on average) inflate its
# seconds enough to fake or hide a growth of WORSE_THAN_LINEAR.
BUSY_SHARE = 0.2
STEPS = ("prepare", "bench")  # what timing.json records other processes' CPU use for
MISSING = "—"


@dataclasses.dataclass(frozen=True)
class PhaseTime:
    seconds: float | None
    images: float | None  # images through the phase (None: not recorded; growth then uses the dataset's)

    @property
    def rate(self) -> float | None:
        return self.images / self.seconds if self.images and self.seconds else None


@dataclasses.dataclass(frozen=True)
class SizeResult:
    classes: int
    images: int  # in the dataset, every split
    phases: dict[str, PhaseTime]  # phase name -> time, in table order
    contention: dict[str, dict] = dataclasses.field(default_factory=dict)  # step -> CpuMonitor.summary()
    cpus: int | None = None

    def busy_steps(self) -> list[str]:
        """The steps during which other processes shared the CPU (see BUSY_SHARE)."""
        if not self.cpus:
            return []
        return [step for step in STEPS if self.contention.get(step, {}).get("other_cores", 0) > BUSY_SHARE * self.cpus]


# ---- from a run's files to phase times ---------------------------------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    known = [float(value) for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _fit_phase(records: list[ResultRecord], phase: str, images_of=None) -> PhaseTime:
    """A phase the methods of one fit share (startup, data, total): the same figure is in every record."""
    return PhaseTime(_mean([r.phases.get(phase) for r in records]),
                     _mean([images_of(r) for r in records]) if images_of else None)


def bench_phases(records: list[ResultRecord], methods: list[str]) -> dict[str, PhaseTime]:
    """startup, data, `unlearn <method>` per method, eval (mean per evaluated row), fit total."""
    phases = {"startup": _fit_phase(records, "startup"),
              "data": _fit_phase(records, "data", lambda r: r.images.get("data"))}
    for method in methods:
        rows = [r for r in records if r.method == method]
        phases[f"unlearn {method}"] = PhaseTime(_mean([r.phases.get("unlearn") for r in rows]),
                                                _mean([r.images.get("unlearn") for r in rows]))
    phases["eval"] = PhaseTime(_mean([r.phases.get("eval") for r in records]),
                               _mean([r.images.get("eval") for r in records]))
    phases["fit total"] = _fit_phase(records, "total")
    return phases


def size_result(classes: int, counts: dict[str, int], timing: dict, original: dict | None,
                records: list[ResultRecord], methods: list[str]) -> SizeResult:
    """One class count's phase times from its dataset counts, timing.json, the original's made.json and records."""
    images = sum(counts.values())
    phases = {"prepare": PhaseTime(timing.get("prepare_seconds"), images if timing.get("prepare_seconds") else None)}
    if original and original.get("train_seconds") is not None:
        phases["train original"] = PhaseTime(original["train_seconds"],
                                             counts.get("train", 0) * (original.get("epochs_run") or 0) or None)
    phases.update(bench_phases(records, methods))
    if timing.get("bench_wall_seconds") is not None:  # the whole `unlearn bench`: both Ray start-ups included
        phases["bench wall"] = PhaseTime(timing["bench_wall_seconds"], None)
    return SizeResult(classes, images, phases, timing.get("contention", {}), timing.get("cpus"))


def size_folder(out: str, classes: int) -> str:
    return storage.join(out, f"c{classes}")


def _json_or_none(uri: str) -> dict | None:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def load_size(out: str, classes: int, methods: list[str]) -> SizeResult | None:
    """The phase times recorded under --out for one class count; None when its bench has not run yet."""
    folder, data = size_folder(out, classes), data_uri(out, classes)
    run = storage.join(folder, "run")
    recorded = storage.list_files(storage.join(run, "records"), ".json")
    if not (recorded and storage.exists(storage.join(data, META_FILE))):
        return None
    return size_result(classes, read_meta(data).counts, _json_or_none(storage.join(folder, "timing.json")) or {},
                       _json_or_none(storage.join(folder, "models", "original", "made.json")),
                       load_records(run), methods)


# ---- growth and the table -----------------------------------------------------------------------------------


def phase_names(results: list[SizeResult]) -> list[str]:
    return list(dict.fromkeys(name for result in results for name in result.phases))


def growth(base: SizeResult, other: SizeResult, phase: str) -> float | None:
    """(seconds / base seconds) / (dataset images / base dataset images): 1.0 = linear."""
    first, second = base.phases.get(phase), other.phases.get(phase)
    if not (first and second and first.seconds and second.seconds is not None):
        return None
    return (second.seconds / first.seconds) / (other.images / base.images)


def own_image_ratio(base: SizeResult, other: SizeResult, phase: str) -> float | None:
    """How many times its own images the phase moved at `other` against `base` (None where not recorded)."""
    first, second = base.phases.get(phase), other.phases.get(phase)
    return second.images / first.images if first and second and first.images and second.images else None


def other_image_growth(results: list[SizeResult], tolerance: float = 0.1) -> list[tuple[str, int, float, float]]:
    """(phase, class count, own image ratio, dataset image ratio) where the two differ by more than `tolerance`."""
    base, *others = sorted(results, key=lambda r: r.classes)
    found = []
    for phase in phase_names(results):
        for other in others:
            own, dataset = own_image_ratio(base, other, phase), other.images / base.images
            if own is not None and abs(own / dataset - 1) > tolerance:
                found.append((phase, other.classes, own, dataset))
    return found


def worse_than_linear(results: list[SizeResult]) -> list[tuple[str, int, float]]:
    """(phase, class count, growth) of every phase that grew worse than linearly against the smallest size."""
    base, *others = sorted(results, key=lambda r: r.classes)
    found = []
    for phase in phase_names(results):
        for other in others:
            value = growth(base, other, phase)
            if value is not None and value > WORSE_THAN_LINEAR:
                found.append((phase, other.classes, value))
    return found


def _seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} s"


def _rate(value: float | None) -> str:
    return MISSING if value is None else f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"


def _growth_cell(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"**{value:.2f} ↑**" if value > WORSE_THAN_LINEAR else f"{value:.2f}"


def markdown(results: list[SizeResult]) -> str:
    """Rows = phases; per class count its seconds (images/s), and for the larger ones the growth."""
    results = sorted(results, key=lambda r: r.classes)
    base, *others = results
    header = ["Phase", *(f"{r.classes} classes" for r in results),
              *(f"growth {base.classes}→{r.classes} (×{r.images / base.images:.1f} images)" for r in others)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
             "| images | " + " | ".join([f"{r.images:,}" for r in results] + [""] * len(others)) + " |"]
    for phase in phase_names(results):
        cells = []
        for result in results:
            time_ = result.phases.get(phase)
            cells.append(MISSING if time_ is None else
                         _seconds(time_.seconds) + (f" ({_rate(time_.rate)})" if time_.rate else ""))
        cells += [_growth_cell(growth(base, other, phase)) for other in others]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    if any(result.contention for result in results):
        cells = [" / ".join(_other_cores(result, step) for step in STEPS) for result in results]
        lines.append("| other processes' cores (prepare / bench) | " + " | ".join(cells + [""] * len(others)) + " |")
    return "\n".join(lines) + "\n\n" + legend(results) + "\n"


def _other_cores(result: SizeResult, step: str) -> str:
    cores = result.contention.get(step, {}).get("other_cores")
    if cores is None:
        return MISSING
    return f"{cores:.2f}" + (" ⚠" if step in result.busy_steps() else "")


def legend(results: list[SizeResult]) -> str:
    flagged = worse_than_linear(results)
    text = ("Seconds per phase (images/s: the phase's images over its seconds). Growth = (seconds / seconds at "
            f"{min(r.classes for r in results)} classes) / (images / images there): 1.0 is linear, below it fixed "
            f"costs are amortised, **↑** above {WORSE_THAN_LINEAR} is worse than linear. eval: mean per "
            "evaluated row; startup, data and fit total: the one Ray Train fit of all rows. Other processes' cores: "
            "how many cores processes outside this benchmark kept busy during the step, on average; ⚠ above "
            f"{BUSY_SHARE:.0%} of the machine's.")
    busy = [f"{result.classes} classes ({', '.join(result.busy_steps())})" for result in results if result.busy_steps()]
    if busy:
        text += (f"\n\n**Other processes shared the CPU** during {'; '.join(busy)}: those seconds are inflated, "
                 "and growth against them is not the pipeline's.")
    differing = other_image_growth(results)
    if differing:
        text += ("\n\nOwn images grew by another factor than the dataset's (capped passes such as the BatchNorm "
                 "refresh, or an early stop), so their images/s mixes other work at each size: "
                 + ", ".join(f"{phase} ×{own:.2f} at {classes} classes (dataset ×{dataset:.1f})"
                             for phase, classes, own, dataset in differing) + ".")
    if not flagged:
        return text + f"\n\nNo phase grew more than {WORSE_THAN_LINEAR}x linearly."
    worst = ", ".join(f"{phase} at {classes} classes ({value:.2f})" for phase, classes, value in flagged)
    return text + f"\n\nWorse than linear: {worst}."


def csv_text(results: list[SizeResult]) -> str:
    """Long format: one row per (phase, class count), with the growth against the smallest class count."""
    results = sorted(results, key=lambda r: r.classes)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["phase", "classes", "dataset_images", "phase_images", "seconds", "images_per_s", "growth",
                     "own_image_ratio"])
    for phase in phase_names(results):
        for result in results:
            time_ = result.phases.get(phase)
            if time_ is None:
                continue
            writer.writerow([phase, result.classes, result.images, time_.images, time_.seconds, time_.rate,
                             growth(results[0], result, phase), own_image_ratio(results[0], result, phase)])
    return buffer.getvalue()


def plot(results: list[SizeResult], path: str) -> str | None:
    """Seconds against images per phase (log-log, with a dashed linear guide from the smallest size), and
    images/s per phase against the class count. Drawn like pipeline/results/plots.py: Agg, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = sorted(results, key=lambda r: r.classes)
    figure = Figure(figsize=(13, 5), layout="constrained")
    times, rates = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    drawn = False
    for phase in phase_names(results):
        points = [(r.images, r.phases[phase]) for r in results if phase in r.phases and r.phases[phase].seconds]
        if len(points) < 2:
            continue
        line, = times.plot([n for n, _ in points], [t.seconds for _, t in points], "o-", label=phase)
        base_images, base = points[0]
        times.plot([n for n, _ in points], [base.seconds * n / base_images for n, _ in points], "--",
                   color=line.get_color(), alpha=0.4, linewidth=1)
        with_rate = [(r.classes, r.phases[phase].rate) for r in results if phase in r.phases and r.phases[phase].rate]
        if with_rate:
            rates.plot([c for c, _ in with_rate], [v for _, v in with_rate], "o-", color=line.get_color(), label=phase)
        drawn = True
    if not drawn:
        return None
    times.set(xscale="log", yscale="log", xlabel="images in the dataset", ylabel="seconds",
              title="Seconds per phase (dashed: linear from the smallest size)")
    rates.set(xscale="log", yscale="log", xlabel="classes", ylabel="images/s",
              title="Throughput per phase (flat = linear)")
    for axes in (times, rates):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=110)
    return path


# ---- running the bench per class count ----------------------------------------------------------------------


def data_uri(out: str, classes: int) -> str:
    return storage.join(out, "data", f"c{classes}")


def overrides(out: str, classes: int, extra: list[str]) -> list[str]:
    """--set values giving one class count its own data, models and name; `extra` (the caller's) last."""
    return [f"data.synthetic.classes={classes}", f"data.uri={data_uri(out, classes)}",
            f"models={storage.join(size_folder(out, classes), 'models')}", *extra]


def _system_busy_ticks() -> int:
    """CPU ticks the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _tree_ticks(root: int) -> int:
    """CPU ticks of `root` and its living descendants, each with the children it has reaped (cutime, cstime):
    this process, the bench it runs, its Ray processes and the prepare workers."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):  # /proc/self is this process again
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:  # a process that has just exited
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...
        children.setdefault(int(fields[1]), []).append(int(entry))
        ticks[int(entry)] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


class CpuMonitor:
    """While a step runs, how many cores other processes on the machine kept busy: the machine's busy CPU time
    (/proc/stat) minus this process tree's. Timings taken while others shared the CPU are inflated, and the
    table flags them rather than reading them as growth. Linux only; elsewhere it records nothing."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.other_ticks = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self) -> tuple[float, int, int]:
        return time.perf_counter(), _system_busy_ticks(), _tree_ticks(os.getpid())

    def _sample(self) -> None:
        last = self._take()
        while not self._stop.wait(self.every_s):
            last = self._add(last)
        self._add(last)

    def _add(self, last: tuple[float, int, int]) -> tuple[float, int, int]:
        now = self._take()
        mine = now[2] - last[2]
        if mine < 0:
            # A descendant reaped outside the tree (orphaned when its parent died first, e.g. a Ray worker at
            # shutdown) took its ticks with it: this interval cannot be split, so it is left out.
            return now
        # max(0, ...): the two counters are read a moment apart, so a quiet machine can read slightly negative.
        self.other_ticks += max(0, (now[1] - last[1]) - mine)
        self.seconds += now[0] - last[0]
        return now

    def __enter__(self) -> "CpuMonitor":
        if os.path.exists("/proc/stat"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        if not self.seconds:
            return {}
        return {"other_cores": self.other_ticks / os.sysconf("SC_CLK_TCK") / self.seconds,
                "load_1min": os.getloadavg()[0]}


def _update_timing(folder: str, **values) -> None:
    uri = storage.join(folder, "timing.json")
    timing = _json_or_none(uri) or {}
    for key, value in values.items():
        timing[key] = {**timing.get(key, {}), **value} if isinstance(value, dict) else value
    storage.write_text(uri, json.dumps(timing, indent=2))


def prepare_timed(config: dict, folder: str) -> None:
    """Prepare the shards if they are not there yet, and record how long that took in timing.json."""
    from jobs.bench import ensure_data

    fresh = not storage.exists(storage.join(config["data"]["uri"], META_FILE))
    started = time.perf_counter()
    with CpuMonitor() as cpu:
        ensure_data(config)  # also refuses shards at that URI prepared from other settings
    if fresh:
        _update_timing(folder, prepare_seconds=time.perf_counter() - started, cpus=os.cpu_count(),
                       contention={"prepare": cpu.summary()})


def bench_needed(config: dict, run: str) -> bool:
    from jobs.bench import rows_done, rows_wanted

    done = rows_done(run)
    return any((row, seed) not in done for row in rows_wanted(config) for seed in config["seeds"])


def run_bench(config_path: str, sets: list[str], folder: str) -> None:
    """`python -m jobs.bench` in its own process (its own Ray, as a user runs it), output to bench.log and
    the console; its wall time and the other processes' CPU use go into timing.json."""
    run = storage.join(folder, "run")
    argv = [sys.executable, "-m", "jobs.bench", "--config", config_path, "--out", run,
            *(item for value in sets for item in ("--set", value))]
    print(f"$ {' '.join(argv[1:])}", flush=True)
    started = time.perf_counter()
    with CpuMonitor() as cpu, open(os.path.join(folder, "bench.log"), "a", encoding="utf-8") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if not line.startswith((" ", "\t")):  # Ray's indented tracebacks and tables go to the log only
                print(line, end="", flush=True)
        process.wait()
    if process.returncode != 0:
        raise SystemExit(f"the bench at {run} failed (exit {process.returncode}); see {folder}/bench.log")
    _update_timing(folder, bench_wall_seconds=time.perf_counter() - started, cpus=os.cpu_count(),
                   contention={"bench": cpu.summary()})


def run_size(config_path: str, out: str, classes: int, extra: list[str]) -> None:
    from jobs.bench import load_config

    sets = overrides(out, classes, extra)
    config = load_config(config_path, sets)
    folder = size_folder(out, classes)
    os.makedirs(folder, exist_ok=True)
    print(f"== {classes} classes ==", flush=True)
    prepare_timed(config, folder)
    if bench_needed(config, storage.join(folder, "run")):
        run_bench(config_path, sets, folder)
    else:
        print(f"every row already recorded under {folder}/run", flush=True)


def write_outputs(results: list[SizeResult], out: str) -> dict[str, str]:
    text = "# Scaling: seconds per phase against images\n\n" + markdown(results)
    written = {"scaling.md": storage.join(out, "scaling.md"), "scaling.csv": storage.join(out, "scaling.csv")}
    storage.write_text(written["scaling.md"], text)
    storage.write_text(written["scaling.csv"], csv_text(results))
    png = plot(results, os.path.join(out, "scaling.png"))
    if png:
        written["scaling.png"] = png
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", nargs="+", type=int, default=list(DEFAULT_CLASSES), help="class counts to run")
    p.add_argument("--out", default="runs/scaling", help="a local folder for the data, runs and the table")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the bench config to scale")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="extra overrides for every class count (as `unlearn bench --set`)")
    p.add_argument("--table-only", action="store_true", help="run nothing; rebuild the table from --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if len(set(args.classes)) < 2:
        raise SystemExit("--classes needs at least two distinct class counts to measure growth")
    from jobs.bench import load_config

    methods = load_config(args.config, args.set)["methods"]
    for classes in [] if args.table_only else sorted(set(args.classes)):
        run_size(args.config, args.out, classes, args.set)
    results = [r for r in (load_size(args.out, c, methods) for c in sorted(set(args.classes))) if r is not None]
    if len(results) < 2:
        raise SystemExit(f"fewer than two class counts have records under {args.out}: nothing to compare")
    print(markdown(results), flush=True)
    written = write_outputs(results, args.out)
    print("written: " + ", ".join(written.values()), flush=True)
    return 0


if __name__ == "__main__":  # prepare's worker processes start by spawn and import this module again
    sys.exit(main())
