"""Queries over NATS request/reply, as a NATS micro service (`nats micro ls` lists it).

`nats req evalbus.v1.api.batch.status '{"batch_id": "..."}'` answers from the database, so it
works whenever the recorder runs, also after every other service has been restarted.
Endpoints: batch.{status,report,quality,samples,resume} and batches.history (contracts/queries.py).
Errors are NATS micro service errors: 400 bad request, 404 no such batch, 503 database down.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.micro
import orjson
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import subjects
from contracts.queries import BatchRef, HistoryQuery, SamplesQuery
from services.recorder.quality import batch_quality
from services.recorder.queries import history, samples_page
from services.recorder.reporting import progress, report

Query = Callable[[AsyncConnection, str], Awaitable[BaseModel | None]]
Resume = Callable[[str, str], Awaitable[BaseModel]]
Handler = Callable[[Request], Awaitable[None]]
Q = TypeVar("Q", bound=BaseModel)
# Room left in a reply for the page's envelope and the micro service's headers.
REPLY_HEADROOM_BYTES = 16 * 1024


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())


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
            await req.respond_error("400", f"bad {model.__name__} (fields: {fields}): {_problems(exc)}")
            return
        try:
            async with engine.connect() as conn:
                result = await answer(conn, query)
        except Exception as exc:
            await req.respond_error("503", f"database unavailable: {type(exc).__name__}")
            return
        if result is None:
            await req.respond_error("404", missing(query))
            return
        await req.respond(result.model_dump_json().encode())

    return handle


def _endpoint(engine: AsyncEngine, query: Query) -> Handler:
    """An endpoint answering `{"batch_id": "..."}`."""

    async def answer(conn: AsyncConnection, ref: BatchRef) -> BaseModel | None:
        return await query(conn, ref.batch_id)

    return _typed_endpoint(engine, BatchRef, answer, lambda ref: f"no batch {ref.batch_id!r}")


def _resume_endpoint(resume: Resume) -> Callable[[Request], Awaitable[None]]:
    async def handle(req: Request) -> None:
        try:
            body = orjson.loads(req.data or b"{}")
            batch_id, token = body["batch_id"], body.get("token") or "manual"
            if not isinstance(batch_id, str) or not isinstance(token, str):
                raise TypeError("batch_id and token must be strings")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            await req.respond_error("400", f'expected {{"batch_id": "...", "token": "..."}}: {exc}')
            return
        try:
            result = await resume(batch_id, token)
        except Exception as exc:
            await req.respond_error("503", f"could not resume: {type(exc).__name__}: {exc}")
            return
        await req.respond(result.model_dump_json().encode())

    return handle


async def start_api(nc: Client, engine: AsyncEngine, resume: Resume) -> Service:
    svc = await nats.micro.add_service(
        nc, name="evalbus-recorder", version="0.1.0", description="evalbus queries over recorded batches"
    )
    group = svc.add_group(name=subjects.api("batch"))
    await group.add_endpoint(name="status", handler=_endpoint(engine, progress))
    await group.add_endpoint(name="report", handler=_endpoint(engine, report))
    await group.add_endpoint(name="resume", handler=_resume_endpoint(resume))
    await group.add_endpoint(name="quality", handler=_endpoint(engine, batch_quality))
    budget = max(64 * 1024, nc.max_payload - REPLY_HEADROOM_BYTES)

    async def samples(conn: AsyncConnection, q: SamplesQuery) -> BaseModel | None:
        return await samples_page(conn, q, budget)

    async def recent(conn: AsyncConnection, q: HistoryQuery) -> BaseModel | None:
        return await history(conn, q)

    await group.add_endpoint(
        name="samples", handler=_typed_endpoint(engine, SamplesQuery, samples, lambda q: f"no batch {q.batch_id!r}")
    )
    batches = svc.add_group(name=subjects.api("batches"))
    await batches.add_endpoint(name="history", handler=_typed_endpoint(engine, HistoryQuery, recent, lambda q: ""))
    return svc
