"""Queries over NATS request/reply, as a NATS micro service (`nats micro ls` lists it).

`nats req evalbus.v1.api.batch.status '{"batch_id": "..."}'` answers from the database, so it
works whenever the recorder runs, also after every other service has been restarted.
"""

from collections.abc import Awaitable, Callable

import nats.micro
import orjson
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import subjects
from services.recorder.reporting import progress, report

Query = Callable[[AsyncConnection, str], Awaitable[BaseModel | None]]
Resume = Callable[[str, str], Awaitable[BaseModel]]


def _endpoint(engine: AsyncEngine, query: Query) -> Callable[[Request], Awaitable[None]]:
    async def handle(req: Request) -> None:
        try:
            body = orjson.loads(req.data or b"{}")
            batch_id = body["batch_id"]
            if not isinstance(batch_id, str):
                raise TypeError("batch_id must be a string")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            await req.respond_error("400", f'expected {{"batch_id": "..."}}: {exc}')
            return
        try:
            async with engine.connect() as conn:
                result = await query(conn, batch_id)
        except Exception as exc:
            await req.respond_error("503", f"database unavailable: {type(exc).__name__}")
            return
        if result is None:
            await req.respond_error("404", f"no batch {batch_id!r}")
            return
        await req.respond(result.model_dump_json().encode())

    return handle


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
    return svc
