"""bench/attribution.py: py-spy samples split a process's measured CPU by category."""

import sysconfig
from pathlib import Path

import pytest

from bench.attribution import FAKE_ANSWERS, KERNEL, OTHER, category, is_syscall, parse, split_cpu, table


def _stdlib_line(module: str, text: str) -> int:
    """The line of this Python's stdlib source holding `text` (line numbers differ between versions)."""
    lines = (Path(sysconfig.get_paths()["stdlib"]) / module).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


ROOT = "Runner.run (asyncio/runners.py:118);Handle._run (asyncio/events.py:80)"
SEND = f"_SelectorSocketTransport.write (asyncio/selector_events.py:{_stdlib_line('asyncio/selector_events.py', 'n = self._sock.send(data)')})"
POLL = f"EpollSelector.select (selectors.py:{_stdlib_line('selectors.py', 'self._selector.poll(')})"


def test_collapsed_stacks_are_parsed_root_first_with_their_counts() -> None:
    stacks = parse(f"{ROOT};Client._flusher (nats/aio/client.py:2363);{SEND} 7\nnot a stack line\n")
    assert stacks == [([*ROOT.split(";"), "Client._flusher (nats/aio/client.py:2363)", SEND], 7)]


def test_socket_and_poll_lines_are_syscalls_and_python_lines_are_not() -> None:
    assert is_syscall(SEND)
    assert is_syscall(POLL)
    assert not is_syscall("Handle._run (asyncio/events.py:80)")
    assert not is_syscall("no frame syntax here")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("BaseModel.model_validate_json (pydantic/main.py:847)", "event models and JSON (pydantic, contracts)"),
        ("Event.to_json (contracts/events.py:195)", "event models and JSON (pydantic, contracts)"),
        ("ClientSession._request (aiohttp/client.py:819)", "HTTP (aiohttp)"),
        ("Parser.parse (nats/protocol/parser.py:122)", "NATS client (nats-py)"),
        ("Connection._do_execute (asyncpg/connection.py:1)", "SQL (SQLAlchemy, asyncpg)"),
        ("_sentence_tokens (services/runtime/models/tokens.py:61)", FAKE_ANSWERS),
        ("judge (services/fake_model/verdicts.py:90)", FAKE_ANSWERS),
        ("chat_answer (services/fake_model/chat.py:110)", FAKE_ANSWERS),
        ("Encoding.encode_ordinary (tiktoken/core.py:76)", FAKE_ANSWERS),
        ("chat_completions (services/fake_model/server.py:170)", "evalbus logic (services)"),
        ("Handle._run (asyncio/events.py:80)", "event loop (asyncio)"),
        ("Logger.info (logging/__init__.py:1)", OTHER),
        ("site (/x/lib/python3.11/site-packages/sqlalchemy/engine/base.py:9)", "SQL (SQLAlchemy, asyncpg)"),
    ],
)
def test_a_frame_is_categorised_by_its_package(frame: str, expected: str) -> None:
    assert category(frame) == expected


def test_user_cpu_follows_the_samples_not_at_a_syscall_and_system_cpu_is_the_kernel_row() -> None:
    pydantic = f"{ROOT};BaseModel.model_validate_json (pydantic/main.py:847)"
    http = f"{ROOT};ClientSession._request (aiohttp/client.py:819)"
    stacks = parse(f"{pydantic} 30\n{http} 10\n{ROOT};{SEND} 500\n{ROOT};{POLL} 400\n")
    split = split_cpu(stacks, user_s=4.0, system_s=0.5)
    assert split == {
        KERNEL: 0.5,
        "event models and JSON (pydantic, contracts)": pytest.approx(3.0),
        "HTTP (aiohttp)": pytest.approx(1.0),
    }
    assert sum(split.values()) == pytest.approx(4.5)  # the measured CPU, all of it, no more


def test_a_process_with_only_syscall_samples_keeps_its_user_cpu_as_other() -> None:
    assert split_cpu(parse(f"{ROOT};{POLL} 5\n"), user_s=1.0, system_s=0.2) == {KERNEL: 0.2, OTHER: 1.0}


def test_the_table_has_a_row_per_category_a_column_per_process_and_native_rows() -> None:
    per_process = {
        "judge": {KERNEL: 0.1, "HTTP (aiohttp)": 0.3},
        "fake-model": {KERNEL: 0.2, FAKE_ANSWERS: 1.0},
    }
    lines = table(per_process, n=1000, native={"nats-server": 0.5})
    assert lines[0] == "| CPU ms / prompt | fake-model | judge | all |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert rows[FAKE_ANSWERS] == f"| {FAKE_ANSWERS} | 1.000 | - | **1.000** |"
    assert rows[KERNEL] == f"| {KERNEL} | 0.200 | 0.100 | **0.300** |"
    assert rows["**process total**"] == "| **process total** | **1.200** | **0.400** | **1.600** |"
    assert rows["nats-server (native, not sampled)"].endswith("| **0.500** |")
