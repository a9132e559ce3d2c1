"""The events of one batch, for tests: one factory instead of a builder per test file.

`BatchEvents(batch_id, n)` makes each event a batch goes through, with small valid defaults that
agree with each other (the judged answer is the responded one, the accepted total is `n`):

    batch = BatchEvents("b-1", 3)
    batch.accepted(); batch.queued(0); batch.responded(0, "Paris"); batch.judged(0, [8, 9])
    batch.scored(0); batch.failed(1, error="slow"); batch.completed()
    batch.pipeline()  # accepted, then queued/responded/judged/scored for every prompt

Any field of the event can be given as a keyword to override its default. `at` stamps every
event with one `occurred_at` (for comparing events whole); without it each gets the time it is made.

`SAMPLES` is one fully populated, valid instance of every event type (every optional string set),
so that a test can reach each string field of each event through its JSON form.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from contracts.base import Event
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.events import (
    BatchAccepted,
    BatchCompleted,
    BatchRejected,
    CallAttempt,
    CallBilled,
    CriterionJudgment,
    JudgeCalls,
    PromptFailed,
    PromptJudged,
    PromptQueued,
    PromptResponded,
    PromptScored,
    Usage,
)
from contracts.ids import prompt_id
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, ChatMessage, StartBatchRequested, SuiteRef
from contracts.quality import FieldLength, QualityConfig, QualityFlag, QualityReport
from contracts.references import ComponentScore, parse_references
from contracts.reports import BatchReport, ComponentSummary, CriterionSummary

DEFAULT_CONFIG = BatchConfig(model="m", criteria=["accuracy", "clarity"])
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class BatchEvents:
    batch_id: str
    n: int = 1
    config: BatchConfig = field(default=DEFAULT_CONFIG)
    suite_name: str = "s"
    at: datetime | None = None

    def _event(self, **fields: Any) -> dict[str, Any]:
        stamped = {"occurred_at": self.at} if self.at is not None else {}
        return {"batch_id": self.batch_id, **stamped, **fields}

    def _prompt(self, i: int, **fields: Any) -> dict[str, Any]:
        return self._event(prompt_id=prompt_id(self.batch_id, i), index=i, **fields)

    @staticmethod
    def question(i: int) -> list[ChatMessage]:
        return [ChatMessage(role="user", content=f"question {i}?")]

    @staticmethod
    def answer(i: int) -> str:
        return f"answer {i}"

    # ---- batch lifecycle ---------------------------------------------------------------------

    def start_requested(self, cases: Sequence[Case] | None = None, **kw: Any) -> StartBatchRequested:
        cases = list(cases) if cases is not None else [Case(messages=self.question(i)) for i in range(self.n)]
        suite = SuiteRef(name=self.suite_name, cases=cases)
        return StartBatchRequested(**self._event(config=self.config, suite=suite) | kw)

    def cancel_requested(self, **kw: Any) -> CancelBatchRequested:
        return CancelBatchRequested(**self._event() | kw)

    def accepted(self, **kw: Any) -> BatchAccepted:
        fields = self._event(config=self.config, suite_name=self.suite_name, total_prompts=self.n)
        return BatchAccepted(**fields | kw)

    def rejected(self, reason: str = "bad suite", **kw: Any) -> BatchRejected:
        return BatchRejected(**self._event(reason=reason) | kw)

    def report(self, **kw: Any) -> BatchReport:
        """A report of every prompt passed; the recorder computes real ones from its rows."""
        now = self.at or datetime.now(UTC)
        fields: dict[str, Any] = {
            "batch_id": self.batch_id,
            "status": BatchStatus.COMPLETED,
            "model": self.config.model,
            "judge_model": self.config.judge_model or self.config.model,
            "session_id": self.config.session_id,
            "experiment": self.config.experiment,
            "suite_name": self.suite_name,
            "total": self.n,
            "completed": self.n,
            "failed": 0,
            "passed": self.n,
            "pass_rate": 1.0,
            "mean_score": 8.0,
            "criteria": [],
            "failures_by_category": {},
            "latency_p50_ms": None,
            "latency_p95_ms": None,
            "tokens_in": 0,
            "tokens_out": 0,
            "judge_tokens_in": 0,
            "judge_tokens_out": 0,
            "cost_usd": 0.0,
            "wall_time_s": None,
            "created_at": now,
            "finished_at": now,
        }
        return BatchReport(**fields | kw)

    def completed(self, report: BatchReport | None = None, **kw: Any) -> BatchCompleted:
        report = report or self.report()
        return BatchCompleted(**self._event(status=report.status, report=report) | kw)

    # ---- one prompt --------------------------------------------------------------------------

    def queued(self, i: int, **kw: Any) -> PromptQueued:
        return PromptQueued(**self._prompt(i, messages=self.question(i), config=self.config) | kw)

    def responded(self, i: int, answer: str | None = None, **kw: Any) -> PromptResponded:
        fields = self._prompt(
            i,
            messages=self.question(i),
            answer=self.answer(i) if answer is None else answer,
            model=self.config.model,
            usage=Usage(),
            config=self.config,
        )
        return PromptResponded(**fields | kw)

    def judgments(self, scores: Sequence[int] | None = None) -> list[CriterionJudgment]:
        """One judgment per criterion of the config (score 8 each unless given), passed by its threshold."""
        scores = list(scores) if scores is not None else [8] * len(self.config.criteria)
        return [
            CriterionJudgment(criterion=c, score=s, passed=s >= self.config.threshold(c), reasoning="r", confidence=1)
            for c, s in zip(self.config.criteria, scores, strict=True)
        ]

    def judged(self, i: int, scores: Sequence[int] | None = None, **kw: Any) -> PromptJudged:
        fields = self._prompt(
            i,
            judge_model=self.config.judge_model or "j",
            judgments=self.judgments(scores),
            usage=Usage(),
            answer=self.answer(i),
            config=self.config,
        )
        return PromptJudged(**fields | kw)

    def scored(self, i: int, **kw: Any) -> PromptScored:
        return PromptScored(**self._prompt(i, overall_score=7.0, passed=True, criteria_passed={}) | kw)

    def failed(
        self,
        i: int,
        stage: Stage = Stage.CHAT,
        category: FailureCategory = FailureCategory.TIMEOUT,
        error: str = "timed out",
        **kw: Any,
    ) -> PromptFailed:
        return PromptFailed(**self._prompt(i, stage=stage, category=category, error=error) | kw)

    def billed(
        self,
        *indexes: int,
        stage: Stage = Stage.CHAT,
        tokens: tuple[int, int] = (10, 3),
        attempts: Sequence[CallAttempt] | None = None,
        **kw: Any,
    ) -> CallBilled:
        """The bill of one model call about the prompts at `indexes` (a fresh call id each time)."""
        tin, tout = tokens
        fields = self._event(
            call_id=str(uuid.uuid4()),
            stage=stage,
            prompt_ids=[prompt_id(self.batch_id, i) for i in indexes or (0,)],
            endpoint="http://model.test/v1",
            model=self.config.model,
            attempts=list(attempts or [CallAttempt(outcome="ok", status=200, tokens_in=tin, tokens_out=tout)]),
            tokens_in=tin,
            tokens_out=tout,
            cost_usd=(tin + tout) / 1e6,
        )
        return CallBilled(**fields | kw)

    def pipeline(self) -> list[Event]:
        """The batch accepted and every prompt through to its score."""
        out: list[Event] = [self.accepted()]
        for i in range(self.n):
            out += [self.queued(i), self.responded(i), self.judged(i), self.scored(i)]
        return out


# ---- one fully populated instance of every event type ------------------------------------------

SAMPLE_BATCH = "b-sample"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

REFERENCES = parse_references(
    [
        {"kind": "exact", "value": "Paris", "name": "exact"},
        {"kind": "normalized", "value": "paris"},
        {"kind": "contains", "value": "Par"},
        {"kind": "regex", "pattern": r"^P\w+", "flags": ["IGNORECASE"]},
        {"kind": "json_valid"},
        {"kind": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}},
        {"kind": "numeric", "value": 1.5, "abs_tol": 0.1},
        {"kind": "sql", "expected_sql": "SELECT 1", "database": "shop"},
    ]
)
FULL_CONFIG = BatchConfig(
    model="gpt-4o-mini",
    judge_model="judge-1",
    criteria=["accuracy", "clarity"],
    thresholds={"accuracy": 8},
    references=REFERENCES[:2],
    quality=QualityConfig(text_fields=["answer"], distribution_fields=["topic"]),
    session_id="session-1",
    experiment="exp-1",
    system_prompt="be brief",
    input_cost_per_mtok=0.5,
    output_cost_per_mtok=1.5,
)
MESSAGES = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="Capital of France?")]
USAGE = Usage(tokens_in=10, tokens_out=3, latency_ms=12.5, attempts=2, cost_usd=0.001)
CASE = Case(
    id="case-1",
    messages=MESSAGES,
    expected="Paris",
    references=REFERENCES,
    metadata={"topic": "geo", "tags": ["a", {"deep": "b"}], "n": 1},
)
_FULL = BatchEvents(SAMPLE_BATCH, 1, config=FULL_CONFIG, suite_name="suite", at=NOW)
REPORT = _FULL.report(
    criteria=[CriterionSummary(criterion="accuracy", mean_score=8.0, pass_rate=1.0, judged=1)],
    failures_by_category={"timeout": 0},
    latency_p50_ms=12.5,
    latency_p95_ms=12.5,
    tokens_in=10,
    tokens_out=3,
    judge_tokens_in=5,
    judge_tokens_out=5,
    cost_usd=0.001,
    components=[ComponentSummary(name="sql", kind="sql", evaluated=1, passed=1, mean_score=1.0, verdicts={"equal": 1})],
    wall_time_s=1.0,
)
QUALITY = QualityReport(
    batch_id=SAMPLE_BATCH,
    samples=1,
    scored=1,
    failed=0,
    pass_rate=1.0,
    total_tokens=13,
    avg_tokens_per_sample=13.0,
    judge_tokens=10,
    text_fields=[FieldLength(field="answer", present=1, avg_chars=5.0, min_chars=5, max_chars=5, below_min=1)],
    distributions={"topic": {"geo": 1}},
    judge_averages={"accuracy": 8.0},
    flags=[QualityFlag(code="short_answer", message="answers are short", value="answer", threshold=300.0)],
    rating="Needs review",
    computed_at=NOW,
)
_ANSWERED = {"messages": MESSAGES, "expected": "Paris", "references": REFERENCES}
SAMPLES: dict[type[Event], Event] = {
    StartBatchRequested: _FULL.start_requested([CASE]),
    CancelBatchRequested: _FULL.cancel_requested(reason="enough"),
    BatchAccepted: _FULL.accepted(),
    BatchRejected: _FULL.rejected(errors=["line 1: bad"]),
    BatchCompleted: _FULL.completed(REPORT, quality=QUALITY),
    PromptQueued: _FULL.queued(0, case_id="case-1", metadata=CASE.metadata, **_ANSWERED),
    PromptResponded: _FULL.responded(0, "Paris", finish_reason="stop", usage=USAGE, **_ANSWERED),
    PromptJudged: _FULL.judged(
        0,
        judgments=[
            CriterionJudgment(
                criterion=c, score=8, passed=True, reasoning="fine", confidence=0.9, suggestions=["say more"]
            )
            for c in FULL_CONFIG.criteria
        ],
        usage=USAGE,
        answer="Paris",
        expected="Paris",
        references=REFERENCES,
        calls=JudgeCalls(share=0.5, unbatched=2, batch_size=2),
    ),
    PromptScored: _FULL.scored(
        0,
        overall_score=8.0,
        criteria_passed={"accuracy": True},
        reasons=["exact: differs"],
        verdict_score=1.0,
        components=[
            ComponentScore(name="exact", kind="exact", score=1.0, passed=True, weight=1.0, detail="exact match")
        ],
    ),
    PromptFailed: _FULL.failed(0, error="timed out", attempts=3, raw_output="partial"),
    CallBilled: _FULL.billed(
        0,
        attempts=[
            CallAttempt(outcome="rate_limit", status=429, latency_ms=2.0, retry_in_s=1.5, reason="HTTP 429: slow"),
            CallAttempt(outcome="ok", status=200, tokens_in=10, tokens_out=3, latency_ms=9.0),
        ],
    ),
}


def sample(cls: type[E]) -> E:
    """The fully populated instance of `cls`, typed as such."""
    evt = SAMPLES[cls]
    assert isinstance(evt, cls)
    return evt
