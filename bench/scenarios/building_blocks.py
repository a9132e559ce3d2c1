"""5. Building blocks (the ceiling): raw JetStream and PostgreSQL rates on servers like the stack's,
and the per-prompt CPU floor they set."""

import tempfile
from pathlib import Path
from typing import Any

from bench.blocks import event_payload, measure_blocks
from bench.report import figure
from bench.scenarios.common import RunBudget, median, say
from evalbus.stack import Stack

# Per prompt with the judge on and the default five criteria (see services/recorder/repository.py):
EVENTS_PUBLISHED = 4  # prompt.queued, .responded, .judged, .scored
EVENTS_CONSUMED = 7  # each by its worker and by the recorder; .scored by the recorder only
ROWS_WRITTEN = 9  # prompts, responses, judge_calls, 5 judgments, scores


def blocks(budget: RunBudget) -> dict[str, Any]:
    n = budget.n(50_000)
    trials: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="evalbus-bench-blocks-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start_servers()
            assert stack.nats and stack.nats.proc and stack.postgres and stack.postgres.proc
            for i in range(budget.repeats):
                trial = measure_blocks(
                    stack.nats_url, stack.nats.proc.pid, stack.database_url, stack.postgres.proc.pid, n
                )
                trials.append(trial)
                say(f"  [blocks-{i + 1}] " + "; ".join(f"{k}: {v['per_s']:,.0f}/s" for k, v in trial.items()))
        finally:
            stack.stop()
    names = list(trials[0]) if trials else []
    figures = []
    cpu_lines = [
        "| block | client CPU µs/item | server CPU µs/item |",
        "|---|---:|---:|",
    ]
    cpu_us: dict[str, float] = {}
    client_us: dict[str, float] = {}
    for name in names:
        unit = "rows/s" if "asyncpg" in name else "msgs/s"
        figures.append(figure(name, unit, [t[name]["per_s"] for t in trials], digits=0))
        client = median([t[name]["client_cpu_us"] for t in trials]) or 0.0
        server = median([t[name]["server_cpu_us"] for t in trials]) or 0.0
        cpu_us[name] = client + server
        client_us[name] = client
        cpu_lines.append(f"| {name} | {client:.1f} | {server:.1f} |")
    floor = _floor_us(cpu_us, names)
    cores = 2
    notes = [
        f"{n:,} messages per JetStream trial and {2 * n:,} rows per PostgreSQL trial, on a fresh nats-server (file "
        "store) and PostgreSQL like the stack's; client = this benchmark process.",
    ]
    if floor is not None:
        notes.append(
            f"Floor for one prompt from these blocks: {EVENTS_PUBLISHED} publishes + {EVENTS_CONSUMED} consumes + "
            f"{ROWS_WRITTEN} rows (executemany) = {floor:.0f} µs of CPU, i.e. at most "
            f"{cores * 1e6 / floor:,.0f} prompts/s on {cores} cores, before any model HTTP call, validation or logic."
        )
    return {
        "title": "5. Building blocks (the ceiling), on the same nats-server and PostgreSQL",
        "setup": f"{budget.repeats} trials; payload ~{len(event_payload())} bytes",
        "params": {"n": n},
        "figures": figures,
        "tables": [{"title": "CPU per item (median)", "lines": cpu_lines}],
        "notes": notes,
        "floor_cpu_us_per_prompt": floor,
        "client_floor_cpu_us_per_prompt": _floor_us(client_us, names),
        "trials": trials,
    }


def _floor_us(cpu_us: dict[str, float], names: list[str]) -> float | None:
    def find(word: str) -> float | None:
        return next((cpu_us[k] for k in names if word in k), None)

    pub, con, rows = find("publish_async"), find("pull fetch"), find("executemany")
    if pub is None or con is None or rows is None:
        return None
    return EVENTS_PUBLISHED * pub + EVENTS_CONSUMED * con + ROWS_WRITTEN * rows
