"""One fully populated, valid instance of every event type: every optional string set, so that a
test can reach each string field of each event through its JSON form."""

from datetime import UTC, datetime

from contracts.base import Event
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.events import (
    BatchAccepted,
    BatchCompleted,
    BatchRejected,
    CriterionJudgment,
    JudgeCalls,
    PromptFailed,
    PromptJudged,
    PromptQueued,
    PromptResponded,
    PromptScored,
    Usage,
)
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, ChatMessage, StartBatchRequested, SuiteRef
from contracts.quality import FieldLength, QualityConfig, QualityFlag, QualityReport
from contracts.references import ComponentScore, parse_references
from contracts.reports import BatchReport, ComponentSummary, CriterionSummary

BATCH = "b-sample"
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

CONFIG = BatchConfig(
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
JUDGMENTS = [
    CriterionJudgment(criterion=c, score=8, passed=True, reasoning="fine", confidence=0.9, suggestions=["say more"])
    for c in CONFIG.criteria
]
COMPONENT = ComponentScore(name="exact", kind="exact", score=1.0, passed=True, weight=1.0, detail="exact match")
REPORT = BatchReport(
    batch_id=BATCH,
    status=BatchStatus.COMPLETED,
    model="gpt-4o-mini",
    judge_model="judge-1",
    session_id="session-1",
    experiment="exp-1",
    suite_name="suite",
    total=1,
    completed=1,
    failed=0,
    passed=1,
    pass_rate=1.0,
    mean_score=8.0,
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
    created_at=NOW,
    finished_at=NOW,
)
QUALITY = QualityReport(
    batch_id=BATCH,
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
CASE = Case(
    id="case-1",
    messages=MESSAGES,
    expected="Paris",
    references=REFERENCES,
    metadata={"topic": "geo", "tags": ["a", {"deep": "b"}], "n": 1},
)
COMMON = {"batch_id": BATCH, "occurred_at": NOW}
PROMPT = {**COMMON, "prompt_id": f"{BATCH}-000000", "index": 0}

SAMPLES: dict[type[Event], Event] = {
    StartBatchRequested: StartBatchRequested(**COMMON, config=CONFIG, suite=SuiteRef(name="suite", cases=[CASE])),
    CancelBatchRequested: CancelBatchRequested(**COMMON, reason="enough"),
    BatchAccepted: BatchAccepted(**COMMON, config=CONFIG, suite_name="suite", total_prompts=1),
    BatchRejected: BatchRejected(**COMMON, reason="bad suite", errors=["line 1: bad"]),
    BatchCompleted: BatchCompleted(**COMMON, status=BatchStatus.COMPLETED, report=REPORT, quality=QUALITY),
    PromptQueued: PromptQueued(
        **PROMPT,
        case_id="case-1",
        messages=MESSAGES,
        expected="Paris",
        references=REFERENCES,
        metadata=CASE.metadata,
        config=CONFIG,
    ),
    PromptResponded: PromptResponded(
        **PROMPT,
        messages=MESSAGES,
        answer="Paris",
        finish_reason="stop",
        model="gpt-4o-mini",
        usage=USAGE,
        expected="Paris",
        references=REFERENCES,
        config=CONFIG,
    ),
    PromptJudged: PromptJudged(
        **PROMPT,
        judge_model="judge-1",
        judgments=JUDGMENTS,
        usage=USAGE,
        answer="Paris",
        expected="Paris",
        references=REFERENCES,
        calls=JudgeCalls(share=0.5, unbatched=2, batch_size=2),
        config=CONFIG,
    ),
    PromptScored: PromptScored(
        **PROMPT,
        overall_score=8.0,
        passed=True,
        criteria_passed={"accuracy": True},
        reasons=["exact: differs"],
        verdict_score=1.0,
        components=[COMPONENT],
    ),
    PromptFailed: PromptFailed(
        **PROMPT,
        stage=Stage.CHAT,
        category=FailureCategory.TIMEOUT,
        error="timed out",
        attempts=3,
        raw_output="partial",
    ),
}
