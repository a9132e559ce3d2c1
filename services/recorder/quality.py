"""A batch's quality report, computed from committed rows and stored when the batch finishes.

The answers are streamed through `QualityTally` one row at a time, so a batch of any size is
measured in constant memory; everything else comes from SQL aggregates.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.quality import FieldLength, QualityConfig, QualityFlag, QualityReport, Rating

OTHER = "(other)"
TOP_VALUES = 20  # values shown per distribution; the rest are summed under "(other)"
MAX_DISTINCT = 1000  # beyond this many distinct values a field is an identifier, not a distribution
MAX_AUTO_FIELDS = 20  # metadata fields reported when the suite names none
_CHUNK = 1000  # answers read per round trip while streaming

_SAMPLES = text(
    """
    SELECT r.answer, r.tokens_in + r.tokens_out AS tokens, p.metadata
    FROM responses r JOIN prompts p ON p.prompt_id = r.prompt_id
    WHERE r.batch_id = :b
    """
)
_TOTALS = text(
    """
    SELECT (SELECT count(*) FROM scores s WHERE s.batch_id = :b) AS scored,
           (SELECT count(*) FILTER (WHERE passed) FROM scores s WHERE s.batch_id = :b) AS passed,
           (SELECT count(DISTINCT f.prompt_id) FROM failures f WHERE f.batch_id = :b
              AND NOT EXISTS (SELECT 1 FROM scores s2 WHERE s2.prompt_id = f.prompt_id)) AS failed,
           (SELECT coalesce(sum(tokens_in + tokens_out), 0) FROM judge_calls j WHERE j.batch_id = :b) AS judge_tokens,
           (SELECT total_prompts FROM batches WHERE batch_id = :b) AS total,
           (SELECT config FROM batches WHERE batch_id = :b) AS config
    """
)
_JUDGE_AVERAGES = text("SELECT criterion, avg(score) AS mean FROM judgments WHERE batch_id = :b GROUP BY criterion")


def structured(answer: str) -> dict[str, Any] | None:
    """The answer as a JSON object, if it is one (bare, or in one ```json fence)."""
    body = answer.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    if not body.startswith("{"):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(x if isinstance(x, str) else orjson.dumps(x).decode() for x in value)
    return orjson.dumps(value).decode()


def text_field(name: str, answer: str, parsed: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> str | None:
    """A text field of one sample: from the answer's JSON, else the metadata; `answer` defaults to the answer."""
    if parsed is not None and name in parsed:
        return as_text(parsed[name])
    if name in metadata:
        return as_text(metadata[name])
    return answer if name == "answer" else None


@dataclass
class _Lengths:
    minimum: int
    present: int = 0
    total: int = 0
    low: int | None = None
    high: int | None = None
    below: int = 0

    def add(self, n: int) -> None:
        self.present += 1
        self.total += n
        self.low = n if self.low is None else min(self.low, n)
        self.high = n if self.high is None else max(self.high, n)
        self.below += n < self.minimum


@dataclass
class QualityTally:
    """Running totals over a batch's answers."""

    config: QualityConfig
    samples: int = 0
    tokens: int = 0
    lengths: dict[str, _Lengths] = field(default_factory=dict)
    values: dict[str, Counter[str]] = field(default_factory=dict)
    overflowed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lengths = {f: _Lengths(self.config.min_chars.get(f, 0)) for f in self.config.text_fields}

    def add(self, answer: str, tokens: int, metadata: Mapping[str, Any]) -> None:
        self.samples += 1
        self.tokens += tokens
        parsed = structured(answer)
        for name, tally in self.lengths.items():
            value = text_field(name, answer, parsed, metadata)
            if value is not None:
                tally.add(len(value))
        named = self.config.distribution_fields
        keys = named if named is not None else [k for k, v in metadata.items() if _scalar(v)]
        for key in keys:
            if key in metadata and _scalar(metadata[key]):
                self._count(key, _label(metadata[key]), explicit=named is not None)

    def _count(self, key: str, value: str, *, explicit: bool) -> None:
        counts = self.values.setdefault(key, Counter())
        if value in counts or len(counts) < MAX_DISTINCT:
            counts[value] += 1
        elif explicit:
            counts[OTHER] += 1
        else:
            self.overflowed.add(key)

    def distributions(self) -> dict[str, dict[str, int]]:
        fields = [k for k in self.values if k not in self.overflowed]
        if self.config.distribution_fields is None:
            fields = sorted(fields)[:MAX_AUTO_FIELDS]
        out: dict[str, dict[str, int]] = {}
        for key in fields:
            counts = self.values[key]
            top = counts.most_common(TOP_VALUES)
            shown = dict(top)
            rest = sum(counts.values()) - sum(shown.values())
            if rest:
                shown[OTHER] = shown.get(OTHER, 0) + rest
            out[key] = shown
        return out

    def field_lengths(self) -> list[FieldLength]:
        return [
            FieldLength(
                field=name,
                present=tally.present,
                avg_chars=round(tally.total / tally.present, 2) if tally.present else None,
                min_chars=tally.low,
                max_chars=tally.high,
                below_min=tally.below,
            )
            for name, tally in self.lengths.items()
        ]


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _label(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def quality_flags(
    cfg: QualityConfig,
    lengths: Iterable[FieldLength],
    distributions: Mapping[str, Mapping[str, int]],
    samples: int,
    failed: int,
    total: int,
) -> list[QualityFlag]:
    flags: list[QualityFlag] = []
    for fl in lengths:
        minimum = cfg.min_chars.get(fl.field)
        # A field no sample has is not a short field (plain evaluations have no citations).
        if minimum and fl.avg_chars is not None and fl.avg_chars < minimum:
            flags.append(
                QualityFlag(
                    code=f"short_{fl.field}",
                    message=f"average {fl.field} is {fl.avg_chars:g} characters, under {minimum}"
                    f" ({fl.below_min} of {fl.present} samples are shorter)",
                    value=fl.avg_chars,
                    threshold=minimum,
                )
            )
    for name in cfg.diversity_fields:
        counts = distributions.get(name)
        if counts and samples >= 2 and len(counts) == 1:
            only = next(iter(counts))
            flags.append(QualityFlag(code=f"single_{name}", message=f"every sample has {name} = {only!r}", value=only))
    if total and failed / total > cfg.max_failure_rate:
        flags.append(
            QualityFlag(
                code="failures",
                message=f"{failed} of {total} prompts failed",
                value=round(failed / total, 4),
                threshold=cfg.max_failure_rate,
            )
        )
    return flags


def rating(cfg: QualityConfig, pass_rate: float | None, flags: list[QualityFlag]) -> Rating:
    if len(flags) >= cfg.poor_flags or (pass_rate is not None and pass_rate < cfg.poor_pass_rate):
        return "Poor"
    if not flags and (pass_rate is None or pass_rate >= cfg.good_pass_rate):
        return "Good"
    return "Needs review"


async def compute_quality(conn: AsyncConnection, batch_id: str) -> QualityReport | None:
    totals = (await conn.execute(_TOTALS, {"b": batch_id})).mappings().one()
    if totals["total"] is None:
        return None
    cfg = QualityConfig.model_validate((totals["config"] or {}).get("quality") or {})
    tally = QualityTally(cfg)
    # In chunks: iterating an async result row by row costs a greenlet switch per row.
    result = await conn.stream(_SAMPLES, {"b": batch_id})
    async for rows in result.partitions(_CHUNK):
        for answer, tokens, metadata in rows:
            tally.add(answer, tokens, metadata or {})
    judge_averages = {
        r.criterion: round(float(r.mean), 3) for r in await conn.execute(_JUDGE_AVERAGES, {"b": batch_id})
    }
    lengths = tally.field_lengths()
    distributions = tally.distributions()
    scored, passed, failed = totals["scored"], totals["passed"], totals["failed"]
    pass_rate = round(passed / scored, 4) if scored else None
    flags = quality_flags(cfg, lengths, distributions, tally.samples, failed, totals["total"])
    return QualityReport(
        batch_id=batch_id,
        samples=tally.samples,
        scored=scored,
        failed=failed,
        pass_rate=pass_rate,
        total_tokens=tally.tokens,
        avg_tokens_per_sample=round(tally.tokens / tally.samples, 2) if tally.samples else None,
        judge_tokens=int(totals["judge_tokens"]),
        text_fields=lengths,
        distributions=distributions,
        judge_averages=dict(sorted(judge_averages.items())),
        flags=flags,
        rating=rating(cfg, pass_rate, flags),
    )


async def batch_quality(conn: AsyncConnection, batch_id: str) -> QualityReport | None:
    """The stored report of a finished batch, or one computed now for a running batch."""
    stored = (
        await conn.execute(text("SELECT report FROM quality_reports WHERE batch_id = :b"), {"b": batch_id})
    ).scalar_one_or_none()
    if stored is not None:
        return QualityReport.model_validate(stored)
    return await compute_quality(conn, batch_id)
