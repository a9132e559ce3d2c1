"""The benchmark's scenarios, one module each. Each measurement starts a fresh stack (empty streams
and tables) and stops it; every scenario returns one JSON-ready dict: setup, figures (median and
spread over the runs, with the issue's target beside them), per-process tables, the raw runs,
and notes."""

from collections.abc import Callable
from typing import Any

from bench.scenarios.building_blocks import blocks
from bench.scenarios.common import RunBudget
from bench.scenarios.latency import latency
from bench.scenarios.leases import leases
from bench.scenarios.memory import memory
from bench.scenarios.overhead import overhead
from bench.scenarios.profiling import profile
from bench.scenarios.scaleout import scaleout

SCENARIOS: dict[str, Callable[[RunBudget], dict[str, Any]]] = {
    "blocks": blocks,
    "overhead": overhead,
    "profile": profile,
    "latency": latency,
    "scaleout": scaleout,
    "leases": leases,
    "memory": memory,
}
