"""`evalbus export`: a batch's samples to JSONL, CSV or Parquet, streamed page by page.

The samples endpoint is walked in index order with `after_index`, and every page is written
before the next is asked for, so a batch of any size never sits in memory whole.

JSONL holds each `Sample` as the API returns it. CSV and Parquet have one flat row per prompt:
the judge's criteria become `score_<criterion>`, `passed_<criterion>` and
`reasoning_<criterion>` columns (the criteria the batch's report names, fixed before the first
row), `prompt` is the last user message; in CSV lists and objects are JSON strings, in Parquet
`messages`, `reasons` and `components` are nested lists and `metadata` and `clipped` JSON strings.
"""

import contextlib
import csv
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from nats.aio.client import Client

from contracts.bounds import MAX_TEXT
from contracts.queries import MAX_PER_PAGE, Sample, SamplesQuery
from evalbus import client

ExportFormat = Literal["jsonl", "csv", "parquet"]

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_COMPONENT = pa.struct(
    [
        ("name", pa.string()),
        ("kind", pa.string()),
        ("score", pa.float64()),
        ("passed", pa.bool_()),
        ("weight", pa.float64()),
        ("detail", pa.string()),
        ("verdict", pa.string()),
    ]
)
# column -> Parquet type, in file order; per-criterion columns follow `judge_model`.
_HEAD: list[tuple[str, pa.DataType]] = [
    ("index", pa.int64()),
    ("prompt_id", pa.string()),
    ("case_id", pa.string()),
    ("status", pa.string()),
    ("prompt", pa.string()),
    ("messages", pa.list_(_MESSAGE)),
    ("expected", pa.string()),
    ("metadata", pa.string()),
    ("answer", pa.string()),
    ("model", pa.string()),
    ("finish_reason", pa.string()),
    ("tokens_in", pa.int64()),
    ("tokens_out", pa.int64()),
    ("latency_ms", pa.float64()),
    ("cost_usd", pa.float64()),
    ("attempts", pa.int64()),
    ("judge_model", pa.string()),
]
_TAIL: list[tuple[str, pa.DataType]] = [
    ("overall_score", pa.float64()),
    ("verdict_score", pa.float64()),
    ("passed", pa.bool_()),
    ("reasons", pa.list_(pa.string())),
    ("components", pa.list_(_COMPONENT)),
    ("failure_stage", pa.string()),
    ("failure_category", pa.string()),
    ("failure_error", pa.string()),
    ("clipped", pa.string()),
]


def columns(criteria: Iterable[str]) -> list[tuple[str, pa.DataType]]:
    per_criterion: list[tuple[str, pa.DataType]] = []
    for c in criteria:
        per_criterion += [(f"score_{c}", pa.int64()), (f"passed_{c}", pa.bool_()), (f"reasoning_{c}", pa.string())]
    return _HEAD + per_criterion + _TAIL


def flat_row(sample: Sample, criteria: Iterable[str]) -> dict[str, Any]:
    """One prompt as a flat row; nested values stay Python lists and dicts here."""
    users = [m.content for m in sample.messages if m.role == "user"]
    # (A prompt's billed calls are in the JSONL export only: a list of lists has no flat form.)
    row: dict[str, Any] = sample.model_dump(
        mode="json", exclude={"judgments", "metadata", "clipped", "messages", "components", "calls"}
    )
    row["prompt"] = users[-1] if users else None
    row["messages"] = [m.model_dump(mode="json") for m in sample.messages]
    row["metadata"] = orjson.dumps(sample.metadata).decode()
    row["clipped"] = orjson.dumps(sample.clipped).decode()
    row["components"] = [c.model_dump(mode="json") for c in sample.components]
    by_criterion = {jd.criterion: jd for jd in sample.judgments}
    for c in criteria:
        jd = by_criterion.get(c)
        row[f"score_{c}"] = None if jd is None else jd.score
        row[f"passed_{c}"] = None if jd is None else jd.passed
        row[f"reasoning_{c}"] = None if jd is None else jd.reasoning
    return row


class Writer(Protocol):
    def write(self, samples: list[Sample]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, samples: list[Sample]) -> None:
        self.out.writelines(s.model_dump_json() + "\n" for s in samples)

    def close(self) -> None:
        self.out.flush()


class CsvWriter:
    def __init__(self, out: TextIO, criteria: list[str]) -> None:
        self.out = out
        self.criteria = criteria
        self.names = [name for name, _ in columns(criteria)]
        self.writer = csv.DictWriter(out, fieldnames=self.names)
        self.writer.writeheader()

    def write(self, samples: list[Sample]) -> None:
        for sample in samples:
            row = flat_row(sample, self.criteria)
            self.writer.writerow(
                {k: orjson.dumps(v).decode() if isinstance(v, list | dict) else v for k, v in row.items()}
            )

    def close(self) -> None:
        self.out.flush()


class ParquetWriter:
    def __init__(self, path: Path, criteria: list[str]) -> None:
        self.criteria = criteria
        self.schema = pa.schema(columns(criteria))
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, samples: list[Sample]) -> None:
        if samples:
            rows = [flat_row(s, self.criteria) for s in samples]
            self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


async def walk(nc: Client, batch_id: str, filters: list[str] | None = None) -> AsyncIterator[list[Sample]]:
    """Every matching sample of the batch, a page at a time, in index order."""
    after = -1
    while True:
        page = await client.fetch_samples(
            nc,
            SamplesQuery(
                batch_id=batch_id,
                filters=filters or [],
                per_page=MAX_PER_PAGE,
                after_index=after,
                with_total=False,
                max_chars=MAX_TEXT,
            ),
        )
        if page.items:
            yield page.items
        if page.next_after_index is None:
            return
        after = page.next_after_index


async def export(
    nc: Client, batch_id: str, fmt: ExportFormat, out: Path | None, filters: list[str] | None = None
) -> int:
    """Write the batch's samples to `out` (stdout when None, not for Parquet); returns the rows written.

    A file is written under a `.part` name and renamed when complete, so a failed export leaves
    no file that looks finished.
    """
    criteria = [c.criterion for c in (await client.fetch_report(nc, batch_id)).criteria]
    if fmt == "parquet" and out is None:
        raise ValueError("Parquet needs a file: give --out PATH")
    part = None if out is None else out.with_name(out.name + ".part")
    text: TextIO | None = None
    writer: Writer
    if fmt == "parquet":
        assert part is not None
        writer = ParquetWriter(part, criteria)
    else:
        text = sys.stdout if part is None else open(part, "w", encoding="utf-8", newline="")  # noqa: SIM115
        writer = JsonlWriter(text) if fmt == "jsonl" else CsvWriter(text, criteria)
    rows = 0
    try:
        async for samples in walk(nc, batch_id, filters):
            writer.write(samples)
            rows += len(samples)
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        if part is not None:
            part.unlink(missing_ok=True)
        raise
    finally:
        if text is not None and text is not sys.stdout:
            text.close()
    if part is not None and out is not None:
        part.replace(out)
    return rows
