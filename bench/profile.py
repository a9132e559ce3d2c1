"""`python -m bench.profile [--n 6000]`: where the CPU goes, per process.

Starts a fresh overhead-bound stack (fake model at 0 ms, judge on) and records every Python
process with `py-spy record --format raw --nonblocking` for the whole of one batch. Writes the
collapsed stacks to bench/results/profiles/<process>.txt and a summary (self time by package, by
function and by line; inclusive time by function) to bench/results/profiles/summary.md. `make
bench` runs the same recording as its `profile` scenario and splits each process's measured CPU by
category (bench/attribution.py). Needs py-spy (a dev dependency) and ptrace rights.
"""

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.attribution import FRAME, frame_location, package, parse
from bench.harness import RESULTS_DIR, BatchRun, BenchStack, StackSpec, batch_config, run_batch

PROFILES = RESULTS_DIR / "profiles"
ATTACH_S = 1.0  # py-spy needs a moment to attach before the batch starts


class ProfilerUnavailable(RuntimeError):
    """py-spy is missing or may not attach (no ptrace rights)."""


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise ProfilerUnavailable("py-spy not found: pip install py-spy (make bench installs it)")
    return found


@dataclass
class Profiled:
    run: BatchRun
    stacks: dict[str, list[tuple[list[str], int]]]  # process -> collapsed stacks
    user_s: dict[str, float]  # process -> user CPU seconds over the batch
    system_s: dict[str, float]


def profile_batch(bs: BenchStack, n: int, out_dir: Path = PROFILES) -> Profiled:
    """Run one batch with py-spy on every Python process of the stack from start to end."""
    spy = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    suite = bs.suite(n)
    procs = {name.replace("_", "-"): psutil.Process(proc.pid) for name, proc in bs.stack.procs.items()}
    spies: dict[str, subprocess.Popen[bytes]] = {}
    for name, proc in procs.items():
        argv = [spy, "record", "--pid", str(proc.pid), "--format", "raw", "--nonblocking"]
        argv += ["--output", str(out_dir / f"{name}.txt")]
        spies[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(ATTACH_S)
        failed = {name: sp for name, sp in spies.items() if sp.poll() is not None}
        if failed:
            errors = "; ".join(
                f"{k}: {sp.communicate()[1].decode(errors='replace')[-300:]}" for k, sp in failed.items()
            )
            raise ProfilerUnavailable(f"py-spy could not attach: {errors}")
        before = {name: proc.cpu_times() for name, proc in procs.items()}
        run = run_batch(bs, suite, batch_config(concurrency=64), n, max(120, n / 20))
        after = {name: proc.cpu_times() for name, proc in procs.items()}
    finally:
        for sp in spies.values():
            if sp.poll() is None:
                sp.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for sp in spies.values():
            try:
                sp.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                sp.kill()
    return Profiled(
        run=run,
        stacks={name: parse((out_dir / f"{name}.txt").read_text()) for name in procs},
        user_s={name: after[name].user - before[name].user for name in procs},
        system_s={name: after[name].system - before[name].system for name in procs},
    )


def _function(frame: str) -> str:
    m = FRAME.match(frame)
    return f"{m.group('func')} ({m.group('file')})" if m else frame


def summarize(name: str, stacks: list[tuple[list[str], int]], top: int = 20) -> list[str]:
    total = sum(c for _, c in stacks) or 1
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    for frames, count in stacks:
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        leaf = frames[-1]
        self_pkg[package(frame_location(leaf)[0])] += count
        self_fn[_function(leaf)] += count
        self_line[leaf] += count
        for fn in {_function(f) for f in frames}:
            incl_fn[fn] += count

    def pct(c: int) -> str:
        return f"{c / total * 100:.1f}%"

    out = [f"## {name} ({total} samples)", "", "| self time by package | share |", "|---|---:|"]
    out += [f"| {k} | {pct(v)} |" for k, v in self_pkg.most_common(12)]
    out += ["", "| self time by function | share |", "|---|---:|"]
    out += [f"| `{k}` | {pct(v)} |" for k, v in self_fn.most_common(top)]
    out += ["", "| self time by line | share |", "|---|---:|"]
    out += [f"| `{k}` | {pct(v)} |" for k, v in self_line.most_common(top // 2)]
    out += ["", "| inclusive time by function (below the entry chain) | share |", "|---|---:|"]
    # The entry chain (runpy, CLI, event loop) holds nearly every sample and says nothing: skip it.
    below_root = [(k, v) for k, v in incl_fn.most_common() if v < 0.7 * total]
    out += [f"| `{k}` | {pct(v)} |" for k, v in below_root[:top]]
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="prompts in the batch (default 6000)")
    args = parser.parse_args(argv)
    with BenchStack(StackSpec(fake_model={"latency_ms": "0"}), "profile") as bs:
        profiled = profile_batch(bs, args.n)
    run = profiled.run
    lines = [
        "# Profiles of the overhead-bound scenario",
        "",
        f"Batch of {run.n:,} prompts: {run.rate:,.1f} prompts/s; CPU ms/prompt by process: "
        + ", ".join(f"{k} {v * 1000 / run.n:.2f}" for k, v in sorted(run.cpu_s.items(), key=lambda kv: -kv[1])),
        "",
    ]
    for name, stacks in sorted(profiled.stacks.items()):
        lines += summarize(name, stacks)
    summary = PROFILES / "summary.md"
    summary.write_text("\n".join(lines))
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
