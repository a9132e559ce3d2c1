"""Queries over NATS request/reply, as a NATS micro service (`nats micro ls` lists it).

`nats req evalbus.v1.api.batch.status '{"batch_id": "..."}'` answers from the database, so it
works whenever the recorder runs, also after every other service has been restarted.
Endpoints: batch.{status,report,quality,samples,resume} and batches.history (contracts/queries.py).
Errors are NATS micro service errors: 400 bad request (naming the field), 404 no such batch,
503 database down, 500 anything else. A description is at most MAX_ERROR_CHARS on one line and
never quotes the request at length, SQL, parameters, driver names or tracebacks (those go to the
log); no reply exceeds the connection's max payload.
"""

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import nats.micro
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import subjects
from contracts.queries import BatchRef, HistoryQuery, ResumeRequest, SamplesQuery
from services.recorder.history_queries import history
from services.recorder.quality import batch_quality
from services.recorder.reporting import progress, report
from services.recorder.sample_queries import samples_page

log = logging.getLogger("evalbus.recorder.api")
Query = Callable[[AsyncConnection, str], Awaitable[BaseModel | None]]
Handler = Callable[[Request], Awaitable[None]]
Q = TypeVar("Q", bound=BaseModel)
# Room left in a reply for the page's envelope and the micro service's headers.
REPLY_HEADROOM_BYTES = 16 * 1024
# An error's description travels in a header: short, one line, and never the request echoed back.
MAX_ERROR_CHARS = 1000
MAX_PROBLEMS = 5
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class Redrives(Protocol):
    """What answers `batch.resume` (redrive.Redriver): None for no such batch."""

    async def redrive(self, batch_id: str, token: str) -> BaseModel | None: ...


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = _UNPRINTABLE.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problems(exc: ValidationError) -> str:
    """Where and what, per problem (the field named, the input value never repeated), bounded."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    parts = [
        f"{_clip('.'.join(str(x) for x in e['loc']), 100) or 'request'}: {_clip(e['msg'], 300)}"
        for e in errors[:MAX_PROBLEMS]
    ]
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(parts)


async def _error(req: Request, code: str, description: str) -> None:
    await req.respond_error(code, _clip(description))


def _guarded(name: str, handle: Handler, max_reply: Callable[[], int]) -> Handler:
    """Every reply bounded, and any unexpected fault a bare 500: never a traceback, SQL or path
    (nats.micro itself would answer with the exception's repr)."""

    async def guarded(req: Request) -> None:
        real_respond = req.respond

        async def respond(data: bytes = b"", headers: dict[str, str] | None = None) -> None:
            if len(data) > max_reply():
                log.error("%s: a reply of %d bytes does not fit; answered 500", name, len(data))
                await _error(req, "500", "the answer is too large to send")
                return
            await real_respond(data, headers)

        req.respond = respond  # type: ignore[method-assign]
        try:
            await handle(req)
        except Exception:
            log.exception("%s failed", name)
            await _error(req, "500", "internal error")

    return guarded


async def _unavailable(req: Request, name: str, exc: Exception) -> None:
    # The detail (SQL, parameters, driver) goes to the log only.
    log.warning("%s: database unavailable: %s", name, _clip(repr(exc), 2000))
    await _error(req, "503", "database unavailable")


def _typed_endpoint(
    engine: AsyncEngine,
    model: type[Q],
    answer: Callable[[AsyncConnection, Q], Awaitable[BaseModel | None]],
    missing: Callable[[Q], str],
) -> Handler:
    """An endpoint whose request is a model: 400 when it does not validate, 404 on None."""

    async def handle(req: Request) -> None:
        try:
            query = model.model_validate_json(req.data or b"{}")
        except ValidationError as exc:
            fields = ", ".join(model.model_fields)
            await _error(req, "400", f"bad {model.__name__} (fields: {fields}): {_problems(exc)}")
            return
        try:
            async with engine.connect() as conn:
                result = await answer(conn, query)
        except Exception as exc:
            await _unavailable(req, model.__name__, exc)
            return
        if result is None:
            await _error(req, "404", missing(query))
            return
        await req.respond(result.model_dump_json().encode())

    return handle


def _endpoint(engine: AsyncEngine, query: Query) -> Handler:
    """An endpoint answering `{"batch_id": "..."}`."""

    async def answer(conn: AsyncConnection, ref: BatchRef) -> BaseModel | None:
        return await query(conn, ref.batch_id)

    return _typed_endpoint(engine, BatchRef, answer, lambda ref: f"no batch {ref.batch_id!r}")


def _redrive_endpoint(redriver: Redrives) -> Handler:
    async def handle(req: Request) -> None:
        try:
            ask = ResumeRequest.model_validate_json(req.data or b"{}")
        except ValidationError as exc:
            await _error(req, "400", f"bad ResumeRequest (fields: batch_id, token): {_problems(exc)}")
            return
        try:
            result = await redriver.redrive(ask.batch_id, ask.token)
        except Exception as exc:
            log.warning("re-drive of %s failed: %s", ask.batch_id, _clip(repr(exc), 2000))
            await _error(req, "503", "could not resume: database or broker unavailable")
            return
        if result is None:
            await _error(req, "404", f"no batch {ask.batch_id!r}")
            return
        await req.respond(result.model_dump_json().encode())

    return handle


async def start_api(nc: Client, engine: AsyncEngine, redriver: Redrives) -> Service:
    svc = await nats.micro.add_service(
        nc, name="evalbus-recorder", version="0.1.0", description="evalbus queries over recorded batches"
    )
    group = svc.add_group(name=subjects.api("batch"))

    def max_reply() -> int:
        return nc.max_payload - 4096  # the micro service's headers ride along

    async def add(on: object, name: str, handler: Handler) -> None:
        await on.add_endpoint(name=name, handler=_guarded(name, handler, max_reply))  # type: ignore[attr-defined]

    await add(group, "status", _endpoint(engine, progress))
    await add(group, "report", _endpoint(engine, report))
    await add(group, "resume", _redrive_endpoint(redriver))  # the wire keeps its name
    await add(group, "quality", _endpoint(engine, batch_quality))
    budget = max(64 * 1024, nc.max_payload - REPLY_HEADROOM_BYTES)

    async def samples(conn: AsyncConnection, q: SamplesQuery) -> BaseModel | None:
        return await samples_page(conn, q, budget)

    async def recent(conn: AsyncConnection, q: HistoryQuery) -> BaseModel | None:
        return await history(conn, q)

    await add(group, "samples", _typed_endpoint(engine, SamplesQuery, samples, lambda q: f"no batch {q.batch_id!r}"))
    batches = svc.add_group(name=subjects.api("batches"))
    await add(batches, "history", _typed_endpoint(engine, HistoryQuery, recent, lambda q: ""))
    return svc
