"""`python -m bench.profile [--n 6000] [--duration 20]`: where the CPU goes, per process.

Starts a fresh overhead-bound stack (fake model at 0 ms, judge on), runs one batch, and after a
short warm-up records every Python process with `py-spy record --format raw --nonblocking` at
the same time. Writes the collapsed stacks to bench/results/profiles/<process>.txt and a summary
(self time by package and by function, inclusive time by function) to
bench/results/profiles/summary.md. Needs py-spy (`pip install py-spy`) and ptrace rights.
"""

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.harness import RESULTS_DIR, BatchRun, BenchStack, StackSpec, batch_config, run_batch

PROFILES = RESULTS_DIR / "profiles"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def parse(path: Path) -> list[tuple[list[str], int]]:
    """Collapsed stacks: `frame;frame;... count`, root first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _package(frame: str) -> str:
    m = FRAME.match(frame)
    file = m.group("file") if m else frame
    if file.startswith("<"):
        return file
    parts = file.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return parts[0].removesuffix(".py") if parts else file


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
        self_pkg[_package(leaf)] += count
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
    parser.add_argument("--duration", type=int, default=20, help="seconds py-spy records (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before recording starts")
    parser.add_argument("--native", action="store_true", help="also sample C extension frames (py-spy -n)")
    args = parser.parse_args(argv)
    spy = py_spy()
    PROFILES.mkdir(parents=True, exist_ok=True)
    spec = StackSpec(fake_model={"latency_ms": "0"})
    with BenchStack(spec, "profile") as bs:
        suite = bs.suite(args.n)
        outcome: list[BatchRun] = []
        batch = threading.Thread(
            target=lambda: outcome.append(run_batch(bs, suite, batch_config(concurrency=64), args.n, 900)),
            daemon=True,
        )
        batch.start()
        time.sleep(args.warmup)
        spies: dict[str, subprocess.Popen[bytes]] = {}
        for name, proc in bs.stack.procs.items():
            out = PROFILES / f"{name.replace('_', '-')}.txt"
            argv = [spy, "record", "--pid", str(proc.pid), "--format", "raw", "--nonblocking"]
            argv += ["--duration", str(args.duration), "--output", str(out)] + (["--native"] if args.native else [])
            spies[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name, sp in spies.items():
            _, err = sp.communicate(timeout=args.duration + 60)
            if sp.returncode != 0:
                print(f"py-spy on {name} failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        batch.join(timeout=900)
    lines = ["# Profiles of the overhead-bound scenario", ""]
    if outcome:
        run = outcome[0]
        lines += [
            f"Batch of {run.n:,} prompts: {run.rate:,.1f} prompts/s; CPU ms/prompt by process: "
            + ", ".join(f"{k} {v * 1000 / run.n:.2f}" for k, v in sorted(run.cpu_s.items(), key=lambda kv: -kv[1])),
            "",
        ]
    for path in sorted(PROFILES.glob("*.txt")):
        lines += summarize(path.stem, parse(path))
    summary = PROFILES / "summary.md"
    summary.write_text("\n".join(lines))
    print(summary.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
