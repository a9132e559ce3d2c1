"""CPU time and resident memory of the stack's processes, read with psutil.

A *target* is one named process and, optionally, every process below it (PostgreSQL: the
postmaster and all its backends). CPU of a tree = the processes alive now (user + system) plus
what their exited children left in `children_user`/`children_system` once reaped, so the sum
only ever grows and a delta over a window is that window's CPU, even if backends come and go.
"""

import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    name: str
    pid: int
    tree: bool = True  # include descendants (PostgreSQL backends; a service's own children, if any)
    own_only: bool = False  # this benchmark process: its children are the stack, counted apart


def _own_cpu(proc: psutil.Process, with_reaped: bool) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    if with_reaped:
        total += t.children_user + t.children_system
    return float(total)


_PROCS: dict[int, psutil.Process] = {}


def _proc(pid: int) -> psutil.Process:
    """A cached psutil handle (it checks the pid's creation time, so a reused pid is not mixed up)."""
    proc = _PROCS.get(pid)
    if proc is None or not proc.is_running():
        proc = _PROCS[pid] = psutil.Process(pid)
    return proc


def _child_pids(pid: int) -> list[int]:
    # /proc/<pid>/task/<tid>/children is ~0.05 ms; psutil's children() scans all of /proc (~7 ms).
    pids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
    except OSError:
        return [c.pid for c in psutil.Process(pid).children()]
    return pids


def _members(target: Target) -> list[psutil.Process]:
    root = _proc(target.pid)
    if target.own_only or not target.tree:
        return [root]
    out, todo = [root], _child_pids(target.pid)
    while todo:
        pid = todo.pop()
        try:
            out.append(_proc(pid))
            todo += _child_pids(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_seconds(target: Target) -> float:
    """Cumulative CPU seconds of the target (NaN once it is gone)."""
    try:
        members = _members(target)
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for i, proc in enumerate(members):
        try:
            total += _own_cpu(proc, with_reaped=not target.own_only or i > 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return total


def cpu_snapshot(targets: Iterable[Target]) -> dict[str, float]:
    return {t.name: cpu_seconds(t) for t in targets}


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), to tell foreign load apart."""
    t = psutil.cpu_times()
    # user includes guest; steal is the hypervisor's, not this machine's work
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def machine_steal_s() -> float:
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if name in after}


@dataclass
class RssTrack:
    """What the sampler saw of one target."""

    peak_single_mb: float = 0.0  # the largest single process of the target
    peak_sum_mb: float = 0.0  # all processes of the target added up (counts shared pages again)
    last_single_mb: float = 0.0
    # RSS minus shared pages (shared memory, mapped files): PostgreSQL's shared_buffers and the
    # libraries every process maps are left out, so what is left is the process's own heap.
    peak_private_mb: float = 0.0
    series_single_mb: list[float] = field(default_factory=list)  # one point per sample
    processes: int = 0  # most processes seen at once


class RssSampler:
    """Samples the RSS of every target every `interval_s` on a thread, keeping peaks and a series."""

    def __init__(self, targets: Sequence[Target], interval_s: float = 0.2) -> None:
        self.targets = list(targets)
        self.interval_s = interval_s
        self.tracks: dict[str, RssTrack] = {t.name: RssTrack() for t in self.targets}
        self.samples = 0
        self.sample_cost_s = 0.0  # time spent sampling, to show the sampler's own footprint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        started = time.perf_counter()
        for target in self.targets:
            try:
                members = _members(target)
            except psutil.NoSuchProcess:
                continue
            sizes: list[int] = []
            private: list[int] = []
            for proc in members:
                try:
                    info = proc.memory_info()
                    sizes.append(info.rss)
                    private.append(info.rss - getattr(info, "shared", 0))
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
            if not sizes:
                continue
            track = self.tracks[target.name]
            single, total = max(sizes) / MB, sum(sizes) / MB
            track.peak_single_mb = max(track.peak_single_mb, single)
            track.peak_sum_mb = max(track.peak_sum_mb, total)
            track.peak_private_mb = max(track.peak_private_mb, max(private) / MB)
            track.last_single_mb = single
            track.series_single_mb.append(round(single, 1))
            track.processes = max(track.processes, len(sizes))
        self.samples += 1
        self.sample_cost_s += time.perf_counter() - started

    def summary(self, series_points: int = 20) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, track in self.tracks.items():
            series = track.series_single_mb
            step = max(1, math.ceil(len(series) / series_points))
            out[name] = {
                "peak_rss_mb": round(track.peak_single_mb, 1),
                "peak_rss_sum_mb": round(track.peak_sum_mb, 1),
                "last_rss_mb": round(track.last_single_mb, 1),
                "peak_private_mb": round(track.peak_private_mb, 1),
                "processes": track.processes,
                "series_mb": series[::step],
            }
        return out


def bench_process() -> Target:
    """This process, without its children (the stack it started)."""
    return Target("bench-client", os.getpid(), tree=False, own_only=True)
