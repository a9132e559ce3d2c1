"""`python -m bench.run [--scenario all|blocks|overhead|profile|latency|scaleout|leases|memory] [--repeats 3] [--quick]`

Prints figures and writes bench/results/<scenario>.json, latest.json and latest.md. A benchmark,
not a test: it exits 0 whatever the timings (non-zero only if a scenario could not run at all).
"""

import argparse
import logging
import sys
import time
import traceback
from typing import Any

from bench import report
from bench.scenarios import SCENARIOS
from bench.scenarios.common import RunBudget, say

ALL = (
    "blocks",
    "overhead",
    "profile",
    "latency",
    "scaleout",
    "leases",
    "memory",
)  # memory last: it takes what time is left


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("all", *ALL), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="N shrunk 10x (a smoke run)")
    parser.add_argument(
        "--budget-min",
        type=float,
        default=25.0,
        help="whole-run time budget; the one N=100,000 memory run gets what is left (default 25)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    budget = RunBudget(repeats=max(1, args.repeats), quick=args.quick, deadline=started + args.budget_min * 60)
    names = list(ALL) if args.scenario == "all" else [args.scenario]
    machine = report.machine()
    say(
        f"evalbus bench: {', '.join(names)}; {budget.repeats} runs each{' (quick: N/10)' if budget.quick else ''}; "
        f"{machine['cpu_count']} x {machine['cpu_model']}, {machine['memory_gb']} GB"
    )
    failed = 0
    for name in names:
        say(f"== {name}")
        t0 = time.monotonic()
        result: dict[str, Any] = {"scenario": name}
        try:
            result.update(SCENARIOS[name](budget))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            failed += 1
            result.update(title=name, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            say(f"  {name} failed: {exc!r}")
        result.update(machine=machine | {"date": report.machine()["date"]}, quick=budget.quick, repeats=budget.repeats)
        result["duration_s"] = round(time.monotonic() - t0, 1)
        report.write_scenario(result)
        say(f"  {name} took {result['duration_s']:.0f} s")
    _, md = report.write_latest(names)
    print(md.read_text())
    say(f"total {time.monotonic() - started:.0f} s; results in {md.parent}")
    return 1 if failed == len(names) else 0


if __name__ == "__main__":
    sys.exit(main())
