"""Shared helpers of the benchmark scripts: the report header, quiet-machine waits, timing, tables.

The scripts run on small shared machines, where another process may take a core for a few
seconds. So every timed run first waits (a bounded while) for the machine to be idle, each
measurement is the best of a few runs, and the report keeps every run's time to show the spread.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# the machine and the software
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` shows it (from ``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def versions(packages: Iterable[str]) -> str:
    out = []
    for name in packages:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")


def command_line() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *sys.argv])


def header(title: str, packages: Sequence[str], extra: dict[str, str] | None = None) -> str:
    """The lines that open a report: what ran, where, with which versions."""
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    mem = memory_gib()
    lines = [
        f"# {title}",
        "",
        f"- command: `{command_line()}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, {cpus} CPUs ({usable} usable)"
        + (f", {mem:.0f} GiB RAM" if mem else ""),
        f"- platform: {platform.platform()}, Python {platform.python_version()}",
        f"- versions: {versions(packages)}",
        f"- mixbatch revision: {git_revision()}",
    ]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# a quiet machine
# ---------------------------------------------------------------------------------------------
def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs, from ``/proc/stat``."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.5) -> float:
    """How many cores the whole machine kept busy over ``interval`` seconds."""
    try:
        b0, t0 = _cpu_times()
        time.sleep(interval)
        b1, t1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (b1 - b0) / max(t1 - t0, 1e-9) * (os.cpu_count() or 1)


#: seconds a script may still spend waiting for a quiet machine, over all its runs
_wait_budget = [120.0]
#: background load (busy cores) seen just before each timed run
BACKGROUND: list[float] = []


def set_wait_budget(seconds: float) -> None:
    _wait_budget[0] = seconds


def wait_until_quiet(threshold: float = 0.3, max_wait: float = 20.0, interval: float = 0.5) -> float:
    """Wait until other processes use less than ``threshold`` cores.

    Waits at most ``max_wait`` seconds, and never more than what is left of the script's wait
    budget (:func:`set_wait_budget`). Returns the background load last seen (busy cores); call it
    while this process is idle.
    """
    t0 = time.monotonic()
    deadline = t0 + min(max_wait, _wait_budget[0])
    load = busy_cores(interval)
    while load > threshold and time.monotonic() < deadline:
        load = busy_cores(1.0)
    _wait_budget[0] = max(0.0, _wait_budget[0] - (time.monotonic() - t0))
    BACKGROUND.append(load)
    return load


def background_summary() -> str:
    """The background load seen before the timed runs, for the report header."""
    if not BACKGROUND:
        return "not measured"
    b = sorted(BACKGROUND)
    return (f"{len(b)} samples of busy cores just before timed runs: min {b[0]:.2f}, "
            f"median {b[len(b) // 2]:.2f}, max {b[-1]:.2f}")


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Runs of one measurement; the best run is the one reported."""

    runs: list[dict[str, float]] = field(default_factory=list)
    background: list[float] = field(default_factory=list)  # busy cores seen before each run
    key: str = "total"

    def add(self, parts: dict[str, float], background: float) -> None:
        self.runs.append(parts)
        self.background.append(background)

    @property
    def best(self) -> dict[str, float]:
        return min(self.runs, key=lambda r: r[self.key])

    def spread(self, scale: float = 1.0) -> str:
        return ", ".join(seconds(r[self.key] * scale) for r in self.runs)

    def noisy(self, threshold: float = 0.3) -> bool:
        return any(b > threshold for b in self.background)


def seconds(x: float) -> str:
    """A duration with three significant digits (at least two decimals above 1)."""
    return f"{x:.2f}" if 1 <= x < 100 else f"{x:.3g}"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants.

    Read from ``/proc``: each process's own time plus that of the children it has reaped, so a
    worker that exited still counts, through whichever process reaped it (the forkserver for
    mixbatch's pool, this process for ``datasets``' pool). The difference of two calls is the
    CPU a run used, which another busy process on the machine barely changes, unlike wall time.
    """
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()  # fields from the 3rd (state) on
        procs[int(entry)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ticks, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        ticks += procs.get(pid, (0, 0))[1]
        stack.extend(children.get(pid, []))
    return ticks / os.sysconf("SC_CLK_TCK")


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of the process tree, result) of ``fn()``."""
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    return wall, tree_cpu_seconds() - c0, out


def warm_page_cache(paths: Iterable[Path]) -> int:
    """Read files once so that every timed run starts from the same (warm) page cache."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(16 << 20):
                total += len(block)
    return total


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (+ unit)."""
    for prefix, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip() if n >= 100 else f"{n:.3g} {unit}".rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown pipe table, padded so that it also reads well as plain text.

    ``align`` has one letter per column: ``l`` or ``r`` (default: first left, others right).
    """
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(r: Sequence[str]) -> str:
        padded = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":" if a == "r" else ":" + "-" * (w + 1))
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def log(msg: str) -> None:
    """Progress notes go to stderr, so stdout holds only the report."""
    print(msg, file=sys.stderr, flush=True)


def run_in_workdir(bench: Callable[[Any, Path], str], args: Any, name: str,
                   setup: Callable[[Path], None] | None = None) -> None:
    """The shared ``main`` of a benchmark: wait budget, a work folder (``--workdir`` or a temp one,
    removed after), optional ``setup(workdir)``, then print ``bench(args, workdir)``'s report."""
    import shutil
    import tempfile

    set_wait_budget(args.max_wait)
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"mixbatch-bench-{name}-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if setup is not None:
            setup(workdir)
        report = bench(args, workdir)
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report)
