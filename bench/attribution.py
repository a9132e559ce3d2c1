"""Where a process's CPU goes: py-spy samples split into a few categories, scaled to measured CPU.

py-spy counts a thread as active while the OS calls it runnable, whether or not it is on a core.
On a saturated machine a process woken by a socket (in the selector's poll) or pre-empted by the
receiver its `send` just woke (in the send) waits there for a core, so those lines collect samples
far beyond their CPU. Samples at such syscall lines are therefore left out, the process's user CPU
is split over the remaining samples, and its system CPU (measured, not sampled) is its own row.
"""

import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

# The fake model's answer building and the token counter it uses: their own category, apart from
# the rest of `services`, so that a benchmark shows what the stand-in model costs.
FAKE_ANSWER_FILES = frozenset(
    {
        *(f"services/fake_model/{m}.py" for m in ("chat", "criteria", "draws", "judge_requests", "tokens", "verdicts")),
        "services/runtime/models/tokens.py",
    }
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Source lines that are one blocking system call: a socket read or write, the selector's poll.
SYSCALL_LINE = re.compile(
    r"_sock\.(send|sendto|sendmsg|recv|recv_into|recvfrom)\(|_selector\.poll\(|\bos\.(read|write)\("
)

KERNEL = "kernel (system calls: sockets, epoll)"
FAKE_ANSWERS = "fake model: answers and token counts"
CATEGORIES: tuple[tuple[str, frozenset[str]], ...] = (
    ("event loop (asyncio)", frozenset({"asyncio", "selectors", "anyio", "uvloop", "_weakrefset"})),
    ("HTTP (aiohttp)", frozenset({"aiohttp", "yarl", "multidict", "aiohappyeyeballs", "propcache", "frozenlist"})),
    ("NATS client (nats-py)", frozenset({"nats"})),
    ("FastStream", frozenset({"faststream", "fast_depends"})),
    (
        "event models and JSON (pydantic, contracts)",
        frozenset({"pydantic", "pydantic_core", "contracts", "orjson", "json", "uuid", "enum", "copy", "dataclasses"}),
    ),
    ("SQL (SQLAlchemy, asyncpg)", frozenset({"sqlalchemy", "asyncpg", "greenlet"})),
    ("breaker and retries (aiobreaker, tenacity)", frozenset({"aiobreaker", "tenacity"})),
    (FAKE_ANSWERS, frozenset({"tiktoken", "fake model answers"})),
    ("evalbus logic (services)", frozenset({"services"})),
)
OTHER = "other (stdlib, logging, ...)"
ORDER = (KERNEL, *(name for name, _ in CATEGORIES), OTHER)


def parse(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: `frame;frame;... count`, root first."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def frame_location(frame: str) -> tuple[str, int | None]:
    m = FRAME.match(frame)
    if not m:
        return frame, None
    return m.group("file").replace("\\", "/"), int(m.group("line")) if m.group("line") else None


def package(file: str) -> str:
    """The fake model's answer modules as one package (they have their own category); otherwise the top package."""
    if file.startswith("<"):
        return file
    parts = file.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if "/".join(parts[:4]) in FAKE_ANSWER_FILES or "/".join(parts[:3]) in FAKE_ANSWER_FILES:
        return "fake model answers"
    return parts[0].removesuffix(".py") if parts else file


@lru_cache(maxsize=4096)
def _source_line(file: str, line: int) -> str:
    """The line's text, looked up where py-spy's short paths come from: the stdlib, site-packages, here."""
    roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], *sys.path]
    for root in roots:
        path = Path(root) / file
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def is_syscall(frame: str) -> bool:
    file, line = frame_location(frame)
    return line is not None and bool(SYSCALL_LINE.search(_source_line(file, line)))


def category(frame: str) -> str:
    pkg = package(frame_location(frame)[0])
    return next((name for name, packages in CATEGORIES if pkg in packages), OTHER)


def split_cpu(stacks: Iterable[tuple[list[str], int]], user_s: float, system_s: float) -> dict[str, float]:
    """CPU seconds by category: user CPU in proportion to the samples not at a syscall line (by the
    leaf frame's package), system CPU as the kernel row."""
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = next((f for f in reversed(frames) if not f.startswith(("process ", "thread "))), None)
        if leaf is None or is_syscall(leaf):
            continue
        counts[category(leaf)] += n
    total = sum(counts.values())
    out = {KERNEL: system_s}
    if total:
        out |= {name: user_s * c / total for name, c in counts.items()}
    else:
        out[OTHER] = user_s
    return out


def table(per_process: Mapping[str, Mapping[str, float]], n: int, native: Mapping[str, float]) -> list[str]:
    """Markdown: a row per category, a column per profiled process and `all`, CPU ms per prompt;
    then one row per native process (nats-server, PostgreSQL) that has no Python profile."""
    procs: Sequence[str] = sorted(per_process, key=lambda p: -sum(per_process[p].values()))
    cats = [c for c in ORDER if any(per_process[p].get(c, 0) > 0 for p in procs)]

    def ms(seconds: float) -> str:
        return f"{seconds * 1000 / n:.3f}" if seconds else "-"

    lines = ["| CPU ms / prompt | " + " | ".join(procs) + " | all |", "|---|" + "---:|" * (len(procs) + 1)]
    for c in sorted(cats, key=lambda c: -sum(per_process[p].get(c, 0) for p in procs)):
        row = [per_process[p].get(c, 0.0) for p in procs]
        lines.append(f"| {c} | " + " | ".join(ms(v) for v in row) + f" | **{ms(sum(row))}** |")
    totals = [sum(per_process[p].values()) for p in procs]
    lines.append("| **process total** | " + " | ".join(f"**{ms(v)}**" for v in totals) + f" | **{ms(sum(totals))}** |")
    blank = " | ".join("" for _ in procs)
    for name, seconds in native.items():
        lines.append(f"| {name} (native, not sampled) | {blank} | **{ms(seconds)}** |")
    return lines


def by_category(per_process: Mapping[str, Mapping[str, float]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for cats in per_process.values():
        out.update(cats)
    return out
