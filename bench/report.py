"""Summaries (median and spread), the machine, and the JSON / markdown files in bench/results/."""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.harness import RESULTS_DIR

ORDER = ("blocks", "overhead", "profile", "latency", "scaleout", "memory")


def stats(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median) of the values that are numbers."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "n": 0}
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / med * 100 if med else None
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "spread_pct": None if spread is None else round(spread, 1),
        "n": len(vals),
    }


def figure(
    label: str,
    unit: str,
    values: Sequence[float | None],
    *,
    target: str | None = None,
    met: bool | None = None,
    digits: int = 1,
    note: str | None = None,
) -> dict[str, Any]:
    st = stats(values)
    for key in ("median", "min", "max"):
        if st[key] is not None:
            st[key] = round(st[key], digits)
    return {"label": label, "unit": unit, **st, "digits": digits, "target": target, "met": met, "note": note}


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "nats_server": _version([str(Path(sys.executable).parent / "nats-server"), "--version"]),
        "postgres": _postgres_version(),
    }


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _postgres_version() -> str:
    try:
        from infra.embedded import postgres_bin_dir  # the same binaries the stack runs

        return _version([str(postgres_bin_dir() / "postgres"), "--version"])
    except Exception:
        return "unknown"


def write_scenario(result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{result['scenario']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)
    return path


def load_all() -> dict[str, dict[str, Any]]:
    """Every scenario's latest result file (a run of one scenario keeps the others' figures)."""
    out: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def write_latest(this_run: list[str]) -> tuple[Path, Path]:
    results = load_all()
    latest = {"machine": machine(), "this_run": this_run, "scenarios": results}
    json_path = RESULTS_DIR / "latest.json"
    json_path.write_text(json.dumps(latest, indent=2, default=str))
    md_path = RESULTS_DIR / "latest.md"
    md_path.write_text(markdown(latest))
    return json_path, md_path


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if digits == 0 or abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**missed**")


def figures_table(figures: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| figure | median | min | max | spread | runs | target | |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for f in figures:
        unit = f" {f['unit']}" if f.get("unit") else ""
        unit += f" ({f['note']})" if f.get("note") else ""
        spread = "-" if f.get("spread_pct") is None else f"{f['spread_pct']:.1f}%"
        d = int(f.get("digits", 1))
        lines.append(
            f"| {f['label']}{unit} | {_num(f['median'], d)} | {_num(f['min'], d)} | {_num(f['max'], d)} | {spread} "
            f"| {f['n']} | {f.get('target') or ''} | {_verdict(f.get('met'))} |"
        )
    return lines


def markdown(latest: dict[str, Any]) -> str:
    m = latest["machine"]
    out = [
        "# evalbus benchmark",
        "",
        f"Written {m['date']} on {m['cpu_count']} x {m['cpu_model']}, {m['memory_gb']} GB RAM, "
        f"Python {m['python']}, {m['nats_server']}, {m['postgres']}.",
        "Medians of the runs shown; spread = (max - min) / median. Targets are printed, never enforced.",
        "",
    ]
    for name in ORDER:
        res = latest["scenarios"].get(name)
        if res is None:
            continue
        when = res.get("machine", {}).get("date", "?")
        fresh = "" if name in latest.get("this_run", []) else " (from an earlier run)"
        quick = "; QUICK smoke run (N/10)" if res.get("quick") else ""
        out += [f"## {res.get('title', name)}", "", f"_{when}{fresh}{quick}; {res.get('setup', '')}_", ""]
        if res.get("error"):
            out += [f"**error:** `{res['error']}`", ""]
        if res.get("figures"):
            out += [*figures_table(res["figures"]), ""]
        for table in res.get("tables", []):
            out += [f"**{table['title']}**", "", *table["lines"], ""]
        out += [f"- {note}" for note in res.get("notes", [])]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
