"""Hostile input against a live stack: `python -m bench.hostile` (`make fuzz`).

Sends hostile start and cancel commands, hostile queries, and forged or garbage events on internal
subjects while batches run; waits for each message's outcome (a `batch.rejected` with a reason, a
dead letter on `evalbus.v1.dlq.*` with a reason, a bounded 4xx query error, or no effect on what
the recorder's API reports) and prints counts by outcome per category. Then every service must
be healthy and a normal small batch must complete exactly. Exit code 1 if anything is WRONG.

The stack is found as the CLI finds it (EVALBUS_NATS_URL, else `evalbus up`'s state file);
`--up` starts one with `evalbus up` when none runs, and stops it at the end.
"""

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import typer
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import ids, subjects
from contracts.enums import FailureCategory, Stage
from contracts.events import BatchCompleted, BatchRejected, PromptFailed, PromptResponded, PromptScored, Usage
from contracts.inputs import BatchConfig, CancelBatchRequested, ChatMessage, StartBatchRequested
from contracts.ops import DeadLetter
from contracts.services import NAMES as SERVICE_NAMES
from evalbus import client, stack
from evalbus.cli.common import connect
from infra import credentials
from services.runtime.settings import get_settings

REJECTED, DEAD, NO_EFFECT, WRONG = "rejected", "dead-lettered", "no effect", "WRONG"
COLUMNS = (REJECTED, DEAD, NO_EFFECT, WRONG)
MAX_ERROR_BYTES = 4096
LEAKS = (
    "select ",
    " from ",
    "traceback",
    'file "',
    ".py",
    "/etc/",
    "/work/",
    "/tmp/",
    "asyncpg",
    "sqlalchemy",
    "root:",
)
MODEL, JUDGE = "evalbus-fake", "evalbus-fake-judge"
VICTIM_PROMPTS = 120
FORGED_TOKENS, FORGED_COST = 1_000_000, 123.0  # far beyond what a normal batch of the fake model uses
TERMINAL_WITHIN_S = 120.0  # a normal batch's generous time to finish on a loaded 2-core machine


def tag() -> str:
    return secrets.token_hex(3)


def cfg(**over: Any) -> dict[str, Any]:
    return {"model": MODEL, "judge_model": JUDGE, "criteria": ["accuracy"], "concurrency": 4, **over}


def cases(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"Question {i}: how do I reset my HomeHub Mini?", **extra} for i in range(n)]


def start_doc(
    batch_id: str, config: dict[str, Any] | None = None, suite: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"batch_id": batch_id, "config": config or cfg(), "suite": suite or {"cases": cases(2)}}


@dataclass
class Seen:
    """Everything the stack said while the probes ran: lifecycle events and dead letters."""

    rejected: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted: Counter[str] = field(default_factory=Counter)
    completed: dict[str, BatchCompleted] = field(default_factory=dict)
    dead_by_seq: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    dead_by_subject: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_lifecycle(self, msg: Msg) -> None:
        parsed = subjects.parse_batch_subject(msg.subject)
        batch_id, verb = (parsed.batch_id, parsed.verb) if parsed else ("", "")
        try:
            if verb == "rejected":
                self.rejected[batch_id].append(BatchRejected.model_validate_json(msg.data).reason)
            elif verb == "accepted":
                self.accepted[batch_id] += 1
            elif verb == "completed":
                self.completed.setdefault(batch_id, BatchCompleted.model_validate_json(msg.data))
        except ValueError:
            pass  # a forged lifecycle event (ours) that does not parse
        self.changed.set()

    async def on_dead_letter(self, msg: Msg) -> None:
        try:
            letter = DeadLetter.model_validate_json(msg.data)
        except ValueError:
            return
        if letter.stream_seq is not None:
            self.dead_by_seq[letter.stream_seq].append(letter.reason)
        self.dead_by_subject[letter.subject].append(letter.reason)
        self.changed.set()

    async def until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True


@dataclass
class Tally:
    rows: dict[str, Counter[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, category: str, outcome: str, note: str = "") -> None:
        self.rows.setdefault(category, Counter())[outcome] += 1
        if outcome == WRONG:
            self.notes.append(f"{category}: {note}")

    def table(self) -> str:
        head = f"{'category':<34} {'sent':>5} " + " ".join(f"{c:>13}" for c in COLUMNS)
        lines = [head, "-" * len(head)]
        total: Counter[str] = Counter()
        for category, counts in self.rows.items():
            total.update(counts)
            sent = sum(counts.values())
            lines.append(f"{category:<34} {sent:>5} " + " ".join(f"{counts[c]:>13}" for c in COLUMNS))
        lines.append("-" * len(head))
        lines.append(f"{'total':<34} {sum(total.values()):>5} " + " ".join(f"{total[c]:>13}" for c in COLUMNS))
        return "\n".join(lines)

    @property
    def wrong(self) -> int:
        return sum(c[WRONG] for c in self.rows.values())


class Probe:
    def __init__(self, nc: Client, seen: Seen, tally: Tally, wait_s: float, operator: Client | None = None) -> None:
        self.nc, self.js, self.seen, self.tally, self.wait_s = nc, nc.jetstream(), seen, tally, wait_s
        # Resume re-drives work: an operator's command (the locked-down config refuses it to `client`).
        self.operator = operator or nc

    async def publish(self, subject: str, data: bytes, msg_id: str | None = None) -> int | None:
        """The stream sequence it was stored at; None if the broker refused it (permissions)."""
        try:
            ack = await self.js.publish(
                subject, data, headers={"Nats-Msg-Id": msg_id or "hz-" + secrets.token_hex(8)}, timeout=10
            )
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            print(f"publish to {subject} refused: {exc!r}", file=sys.stderr)
            return None
        return int(ack.seq)

    def reason_ok(self, reasons: list[str]) -> bool:
        return any(r.strip() for r in reasons) and all(
            not any(x in r.lower() for x in ("root:", "traceback")) for r in reasons
        )

    # --- start commands ------------------------------------------------------------------------

    async def start(self, category: str, doc: dict[str, Any] | bytes, batch_id: str) -> None:
        """A hostile start: it must be rejected with a reason (or dead-lettered, if it names no batch)."""
        data = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        seq = await self.publish(subjects.start_requested(batch_id), data)
        if seq is None:
            self.tally.add(category, WRONG, f"{batch_id}: the broker refused a client's start command")
            return
        got = await self.seen.until(
            lambda: bool(
                self.seen.rejected.get(batch_id) or self.seen.accepted[batch_id] or self.seen.dead_by_seq.get(seq)
            ),
            self.wait_s,
        )
        if self.seen.accepted[batch_id]:
            self.tally.add(category, WRONG, f"{batch_id} accepted")
        elif self.seen.rejected.get(batch_id):
            reasons = self.seen.rejected[batch_id]
            ok = self.reason_ok(reasons) and not any(x in " ".join(reasons) for x in ("root:", "$6$", "token-"))
            self.tally.add(category, REJECTED if ok else WRONG, f"{batch_id} rejection leaks: {reasons[0][:120]!r}")
        elif got and self.seen.dead_by_seq.get(seq):
            self.tally.add(category, DEAD)
        else:
            self.tally.add(category, WRONG, f"{batch_id}: no rejection within {self.wait_s:g}s")

    async def accepted_start(self, category: str, doc: dict[str, Any], batch_id: str, timeout_s: float = 90) -> None:
        """A start that may be accepted if it is then handled safely: rejected, or accepted and
        visible to the recorder and terminal in time."""
        await self.publish(subjects.start_requested(batch_id), orjson.dumps(doc))
        await self.seen.until(
            lambda: bool(self.seen.rejected.get(batch_id) or self.seen.accepted[batch_id]), self.wait_s
        )
        if self.seen.rejected.get(batch_id) and not self.seen.accepted[batch_id]:
            self.tally.add(category, REJECTED if self.reason_ok(self.seen.rejected[batch_id]) else WRONG, "bad reason")
            return
        if not self.seen.accepted[batch_id]:
            self.tally.add(category, WRONG, f"{batch_id}: neither accepted nor rejected")
            return
        status = await self.terminal(batch_id, timeout_s)
        if status is not None:
            self.tally.add(category, NO_EFFECT)
        else:
            self.tally.add(
                category, WRONG, f"{batch_id}: accepted, not terminal after {timeout_s:g}s (status {status})"
            )

    async def racing_starts(self, category: str) -> None:
        batch_id = "b-hz-race-" + tag()
        docs = [start_doc(batch_id), start_doc(batch_id, cfg(model=JUDGE)), start_doc(batch_id, suite={"cases": []})]
        await asyncio.gather(*(self.publish(subjects.start_requested(batch_id), orjson.dumps(d)) for d in docs))
        await self.seen.until(
            lambda: self.seen.accepted[batch_id] + len(self.seen.rejected.get(batch_id, [])) >= 3, self.wait_s
        )
        accepted, rejected = self.seen.accepted[batch_id], len(self.seen.rejected.get(batch_id, []))
        # One may be accepted (the legitimate start); every other one must get a rejection.
        if accepted <= 1 and accepted + rejected == 3:
            for _ in range(accepted):
                self.tally.add(category, NO_EFFECT)
            for _ in range(rejected):
                self.tally.add(category, REJECTED)
        else:
            for _ in range(3):
                self.tally.add(category, WRONG, f"{batch_id}: {accepted} accepted, {rejected} rejected of 3 starts")

    async def cancel_unknown(self, category: str) -> None:
        batch_id = "b-hz-cx-" + tag()
        cancel = CancelBatchRequested(batch_id=batch_id, reason="hostile")
        seq = await self.publish(subjects.cancel_requested(batch_id), cancel.model_dump_json().encode())
        if seq is None:
            self.tally.add(category, WRONG, f"{batch_id}: the broker refused a client's cancel command")
            return
        if await self.seen.until(lambda: bool(self.seen.rejected.get(batch_id) or self.seen.dead_by_seq.get(seq)), 5):
            self.tally.add(category, REJECTED if self.seen.rejected.get(batch_id) else DEAD)
            return
        # Silent: then it must have no effect on a later start of that id.
        await self.publish(subjects.start_requested(batch_id), orjson.dumps(start_doc(batch_id)))
        why = await self.harm(batch_id, 2)
        self.tally.add(category, WRONG if why else NO_EFFECT, f"{batch_id}: a start after an unknown cancel: {why}")

    # --- queries -------------------------------------------------------------------------------

    async def query(self, category: str, endpoint: str, body: bytes, expect: tuple[str, ...] = ("400", "404")) -> None:
        nc = self.operator if endpoint == "batch.resume" else self.nc
        try:
            reply = await nc.request(subjects.api(endpoint), body, timeout=15)
        except Exception as exc:
            self.tally.add(category, WRONG, f"{endpoint}: no reply ({type(exc).__name__})")
            return
        headers = reply.headers or {}
        code, error = headers.get("Nats-Service-Error-Code"), headers.get("Nats-Service-Error", "")
        size = len(error.encode()) + len(reply.data)
        if code in expect and size < MAX_ERROR_BYTES and not any(x in error.lower() for x in LEAKS):
            self.tally.add(category, REJECTED)
        else:
            self.tally.add(category, WRONG, f"{endpoint}: {code or 'success'} ({size} bytes) {error[:100]!r}")

    async def resume_as_client(self, category: str, batch_id: str) -> None:
        """A `client` user's resume must not reach the recorder (no reply: refused by permissions)."""
        if self.operator is self.nc:
            return  # an open stack: nothing to refuse
        try:
            await self.nc.request(subjects.api("batch.resume"), orjson.dumps({"batch_id": batch_id}), timeout=5)
        except Exception:
            self.tally.add(category, REJECTED)
            return
        self.tally.add(category, WRONG, "a client user's resume was answered")

    async def terminal(self, batch_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The recorder's status once it is not running (None: unknown or still running)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = await self.status(batch_id)
            if st is not None and st.get("status") != "running":
                return st
            await asyncio.sleep(1)
        return None

    async def harm(self, batch_id: str, n: int, timeout_s: float = TERMINAL_WITHIN_S) -> str:
        """What is wrong with a normal batch of `n` prompts, by the recorder's API ("" if nothing)."""
        st = await self.terminal(batch_id, timeout_s)
        if st is None:
            return "not terminal"
        try:
            rep = await client.fetch_report(self.nc, batch_id)
        except Exception as exc:
            return f"no report ({exc})"
        if (
            rep.model == "FORGED"
            or rep.total != n
            or rep.completed != n
            or rep.failed
            or rep.status.value != "completed"
        ):
            return f"{rep.status.value}: {rep.completed}/{rep.total} completed, {rep.failed} failed, model {rep.model}"
        if rep.tokens_in >= FORGED_TOKENS or rep.cost_usd >= FORGED_COST:
            return f"forged usage counted: tokens_in {rep.tokens_in}, cost ${rep.cost_usd:.2f}"
        return ""

    async def status(self, batch_id: str) -> dict[str, Any] | None:
        try:
            return orjson.loads(await client.query(self.nc, "status", batch_id))  # type: ignore[no-any-return]
        except client.ApiError:
            return None


# --- forged events during running batches -----------------------------------------------------


def forged_completion(batch_id: str) -> bytes:
    now = "2026-01-01T00:00:00Z"
    report: dict[str, Any] = {
        "batch_id": batch_id, "status": "completed", "model": "FORGED", "judge_model": "FORGED", "session_id": None,
        "experiment": None, "suite_name": "forged", "total": 1, "completed": 1, "failed": 0, "passed": 1,
        "pass_rate": 1.0, "mean_score": 10.0, "criteria": [], "failures_by_category": {}, "latency_p50_ms": None,
        "latency_p95_ms": None, "tokens_in": 0, "tokens_out": 0, "judge_tokens_in": 0, "judge_tokens_out": 0,
        "cost_usd": 0.0, "wall_time_s": 1.0, "created_at": now, "finished_at": now,
    }  # fmt: skip
    evt = BatchCompleted.model_validate({"batch_id": batch_id, "status": "completed", "report": report})
    return evt.to_json()


def scored(batch_id: str, index: int, prompt_id: str | None = None) -> bytes:
    evt = PromptScored(
        batch_id=batch_id,
        prompt_id=prompt_id or ids.prompt_id(batch_id, index),
        index=index,
        overall_score=10.0,
        passed=True,
        criteria_passed={},
    )
    return evt.to_json()


@dataclass
class Forgery:
    category: str
    victims: list[str]  # batches whose recorded outcome must not change
    seqs: list[int] = field(default_factory=list)
    refused: int = 0  # publishes the broker refused (a locked-down stack's permissions)


def responded(batch_id: str, index: int) -> bytes:
    return PromptResponded(
        batch_id=batch_id,
        prompt_id=ids.prompt_id(batch_id, index),
        index=index,
        messages=[ChatMessage(role="user", content="forged")],
        answer="FORGED answer",
        model="FORGED",
        usage=Usage(tokens_in=FORGED_TOKENS, tokens_out=FORGED_TOKENS, cost_usd=FORGED_COST),
        config=BatchConfig(model=MODEL, judge_model=JUDGE, criteria=["accuracy"]),
    ).to_json()


async def forged_events(p: Probe) -> str:
    """Forged and garbage events on internal subjects of running batches, one set of victims per
    category; each message must be refused, dead-lettered, or have no effect on the victims'
    recorded outcome. Returns a victim's id (a known batch for the query probes)."""
    names = ["mismatch", "mismatch-named", "range", "id", "completed", "responded", "garbage"]
    v = {name: await normal_batch(p, VICTIM_PROMPTS, concurrency=2) for name in names}
    forgeries: list[Forgery] = []

    async def forge(category: str, victims: list[str], items: list[tuple[str, bytes]]) -> None:
        f = Forgery(category, victims)
        for subject, data in items:
            seq = await p.publish(subject, data)
            if seq is None:
                f.refused += 1
            else:
                f.seqs.append(seq)
        forgeries.append(f)

    a, b = v["mismatch"], v["mismatch-named"]
    failed_b = [
        PromptFailed(
            batch_id=b,
            prompt_id=ids.prompt_id(b, i),
            index=i,
            stage=Stage.CHAT,
            category=FailureCategory.CANCELLED,
            error="x",
        ).to_json()
        for i in range(5)
    ]
    await forge(
        "forged: subject/body mismatch", [a, b], [(subjects.batch_event(a, "prompt", "failed"), d) for d in failed_b]
    )
    r = v["range"]
    await forge(
        "forged: index out of range",
        [r],
        [(subjects.batch_event(r, "prompt", "scored"), scored(r, i)) for i in range(100_000, 100_010)],
    )
    i_ = v["id"]
    await forge(
        "forged: prompt id not its index",
        [i_],
        [(subjects.batch_event(i_, "prompt", "scored"), scored(i_, i, ids.prompt_id(i_, 999))) for i in range(3, 8)],
    )
    c = v["completed"]
    await forge("forged: batch.completed", [c], [(subjects.batch_event(c, "batch", "completed"), forged_completion(c))])
    rs = v["responded"]  # the last prompts of a slow batch: forged before the real answers arrive
    await forge(
        "forged: prompt.responded first",
        [rs],
        [
            (subjects.batch_event(rs, "prompt", "responded"), responded(rs, i))
            for i in range(VICTIM_PROMPTS - 5, VICTIM_PROMPTS)
        ],
    )
    g = v["garbage"]
    garbage = [
        b"\x00\xff garbage \x00",
        b'{"batch_id": "' + g.encode() + b'", "prompt_id": "x\\u0000"}',
        b"[" * 5000 + b"]" * 5000,
    ]
    await forge(
        "garbage: raw bytes and NUL",
        [g],
        [
            (subjects.batch_event(g, "prompt", verb), d)
            for verb in ("queued", "responded", "judged", "scored", "failed")
            for d in garbage
        ],
    )

    names_ = list(v.values())  # waited for side by side: a stalled stack costs one timeout, not seven
    harm = dict(zip(names_, await asyncio.gather(*(p.harm(x, VICTIM_PROMPTS) for x in names_)), strict=True))
    await asyncio.sleep(2)  # dead letters of the last forgeries
    for f in forgeries:
        for _ in range(f.refused):
            p.tally.add(f.category, REJECTED)
        hurt = {victim: harm[victim] for victim in f.victims if harm[victim]}
        for seq in f.seqs:
            reasons = p.seen.dead_by_seq.get(seq)
            if reasons and p.reason_ok(reasons) and not hurt:
                p.tally.add(f.category, DEAD)
            elif not hurt:
                p.tally.add(f.category, NO_EFFECT)
            else:
                p.tally.add(
                    f.category,
                    WRONG,
                    f"seq {seq} {'dead-lettered' if reasons else 'not dead-lettered'}; victims: {hurt}",
                )
    return v["range"]


# --- the run ---------------------------------------------------------------------------------


async def hostile_starts(p: Probe) -> None:
    def bid(kind: str) -> str:
        return f"b-hz-{kind}-{tag()}"

    for doc in (
        lambda b: start_doc(b, suite={"cases": [{"prompt": "a\x00b"}]}),
        lambda b: start_doc(b, cfg(model="m\x00")),
        lambda b: start_doc(b, suite={"cases": [{"prompt": "q", "metadata": {"k\x00": "v\x00"}}]}),
        lambda b: start_doc(b, suite={"cases": [{"prompt": "q", "expected": "\x00"}]}),
        lambda b: start_doc(b, cfg(experiment="e\x00")),
    ):
        b = bid("nul")
        await p.start("start: NUL in fields", doc(b), b)
    for doc in (
        lambda b: start_doc(b, suite={"cases": [{"prompt": "x" * 300_000}]}),
        lambda b: start_doc(b, cfg(system_prompt="y" * 300_000)),
        lambda b: start_doc(b, cfg(criteria=[f"c{i}" for i in range(500)])),
        lambda b: start_doc(b, cfg(session_id="s" * 5000)),
    ):
        b = bid("huge")
        await p.start("start: huge fields", doc(b), b)
    for url in (
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "unix:/var/run/docker.sock",
        "http://169.254.169.254/latest/meta-data/",
        "http://exa mple.com/v1",
    ):
        b = bid("url")
        await p.start("start: bad base_url", start_doc(b, cfg(base_url=url)), b)
        b = bid("jurl")
        await p.start("start: bad base_url", start_doc(b, cfg(judge_base_url=url)), b)
    for path in ("/etc/shadow", "/etc/passwd", "/proc/self/environ", "../../../../etc/hosts", "/nonexistent/x.jsonl"):
        b = bid("path")
        await p.start("start: suite path outside suite dirs", start_doc(b, suite={"path": path}), b)
    for name in ("../../../../etc/passwd", "/etc/passwd", "..", "customer_support/../../x", "nosuchsuite"):
        b = bid("builtin")
        await p.start("start: builtin path traversal", start_doc(b, suite={"builtin": name}), b)
    b = bid("re")
    nested = {"kind": "regex", "pattern": "(" * 3000 + ")" * 3000}
    await p.start("start: nested regex", start_doc(b, suite={"cases": cases(2, references=[nested])}), b)
    b = bid("re")
    await p.start("start: nested regex", start_doc(b, cfg(references=[nested])), b)
    b = bid("bt")
    backtracking = {"kind": "regex", "pattern": "(.|.)*\u0001"}
    await p.accepted_start(
        "start: backtracking regex", start_doc(b, suite={"cases": cases(2, references=[backtracking])}), b
    )
    b = "b-hz-long-" + tag()
    await p.accepted_start("start: 200-char model name", start_doc(b, cfg(model="m" * 200, judge_enabled=False)), b)
    for body in (b"\x00\xff", b"{}", b'{"batch_id": "Bd"}', b"[" * 5000 + b"]" * 5000, b"null"):
        b = bid("junk")
        await p.start("start: garbage body", body, b)
    b = bid("zero")
    await p.start("start: no cases", start_doc(b, suite={"cases": []}), b)
    b = bid("subj")
    await p.start("start: body id not the subject's", start_doc("b-hz-other-" + tag()), b)
    for _ in range(3):
        await p.racing_starts("start: duplicate/racing starts")
    for _ in range(2):
        await p.cancel_unknown("cancel: unknown batch")


async def hostile_queries(p: Probe, known: str) -> None:
    big = orjson.dumps({"batch_id": known, "filters": ["bogus=" + "x" * 50_000] * 20})
    await p.query("query: 1 MB filters", "batch.samples", big)
    await p.query(
        "query: 1 MB filters", "batch.samples", orjson.dumps({"batch_id": known, "filters": ["x" * 1000] * 1000})
    )
    for endpoint in ("batch.status", "batch.report", "batch.quality", "batch.samples", "batch.resume"):
        await p.query("query: NUL in ids", endpoint, b'{"batch_id": "b-x\\u0000"}')
    await p.query("query: NUL in ids", "batches.history", b'{"experiment": "e\\u0000"}')
    await p.query("query: NUL in ids", "batches.history", b'{"model": "m\\u0000"}')
    await p.query(
        "query: NUL in ids", "batch.samples", orjson.dumps({"batch_id": known, "filters": ["case_id=a\u0000"]})
    )
    for body in (
        {"batch_id": known, "after_index": 10**30},
        {"batch_id": known, "page": 10**30},
        {"batch_id": known, "per_page": 10**30},
    ):
        await p.query("query: huge ints", "batch.samples", _json(body))
    await p.query("query: huge ints", "batches.history", _json({"limit": 10**30}))
    await p.query("query: unknown batch resume", "batch.resume", b'{"batch_id": "b-hz-no-such-batch"}', expect=("404",))
    await p.resume_as_client("query: resume as client", known)
    await p.query("query: garbage body", "batch.status", b"\x00\xff")
    await p.query("query: garbage body", "batch.samples", b"[" * 5000 + b"]" * 5000)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson refuses ints beyond 64 bits


async def normal_batch(p: Probe, n: int, concurrency: int = 4) -> str:
    batch_id = "b-hz-ok-" + tag()
    start = StartBatchRequested.model_validate(start_doc(batch_id, cfg(concurrency=concurrency), {"cases": cases(n)}))
    await client.publish_start(p.nc, start)
    await p.seen.until(lambda: bool(p.seen.accepted[batch_id] or p.seen.rejected.get(batch_id)), p.wait_s)
    return batch_id


async def health(nc: Client) -> list[str]:
    sick = []
    for svc in SERVICE_NAMES:
        status = await client.service_status(nc, svc, timeout_s=10)
        if not status.get("healthy"):
            sick.append(f"{svc}: {status.get('error', 'not healthy')}")
        elif status.get("restarts"):
            sick.append(f"{svc}: restarted {status['restarts']} times")
    return sick


async def run(wait_s: float) -> int:
    try:
        nc = await connect()  # found and logged in to exactly as the CLI does
    except typer.Exit as exc:
        print("no stack: set EVALBUS_NATS_URL or run `evalbus up` (or pass --up)", file=sys.stderr)
        return int(exc.exit_code)
    seen, tally = Seen(), Tally()
    await nc.subscribe(subjects.any_batch("batch", "*"), cb=seen.on_lifecycle)
    await nc.subscribe(subjects.dlq("*"), cb=seen.on_dead_letter)
    await nc.flush()
    operator: Client | None = None  # with EVALBUS_NATS_URL, every query goes as the one user given
    if not get_settings().nats_url:
        with contextlib.suppress(typer.Exit):  # a stack without the operator role: resume goes as the client
            operator = await connect(credentials.OPERATOR_ROLE)
    p = Probe(nc, seen, tally, wait_s, operator)
    sick = await health(nc)
    if sick:
        print("not healthy before the run: " + "; ".join(sick), file=sys.stderr)
        return 1
    t0 = time.monotonic()
    known = await forged_events(p)
    print(f"forged events: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    t0 = time.monotonic()
    await hostile_starts(p)
    print(f"hostile starts: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    await hostile_queries(p, known)
    print(tally.table())
    sick = await health(nc)
    final = await normal_batch(p, 10)
    why = await p.harm(final, 10)
    print(f"\nservices: {'all healthy' if not sick else 'NOT HEALTHY: ' + '; '.join(sick)}")
    print(f"normal batch {final}: {why or 'completed exactly (10/10)'}")
    for note in tally.notes:
        print(f"WRONG  {note}")
    await nc.drain()
    if operator is not None:
        await operator.drain()
    return 0 if tally.wrong == 0 and not sick and not why else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--up", action="store_true", help="start `evalbus up` if no stack runs, and stop it after")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for each message's outcome")
    args = parser.parse_args()
    evalbus = str(Path(sys.executable).with_name("evalbus"))
    settings = get_settings()
    started = False
    if args.up and not settings.nats_url and stack.read_state(settings.data_dir) is None:
        subprocess.run([evalbus, "up"], check=True)
        started = True
    try:
        return asyncio.run(run(args.wait))
    finally:
        if started:
            subprocess.run([evalbus, "down"], check=False, env=os.environ)


if __name__ == "__main__":
    raise SystemExit(main())
