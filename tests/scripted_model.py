"""A scripted OpenAI-compatible model server for tests: answers each request with the next
scripted reply and records every request it gets (path, headers, body, peer), so that a test can
check what a client sent, and where, or that a server of a client's own saw no request at all."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from pydantic import SecretStr

from services.runtime.models.client import CallOptions
from services.runtime.models.endpoints import Endpoint


def ok_body(text: str = "hello", usage: bool = True) -> dict[str, object]:
    body: dict[str, object] = {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3}
    return body


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering


def ok(text: str = "hello", usage: bool = True) -> Reply:
    return Reply(body=orjson.dumps(ok_body(text, usage)))


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, object]
    peer: tuple[str, int]


class ScriptedModel:
    """Answers each request with the next scripted reply (the last one repeats)."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.running = 0
        self.peak = 0
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                orjson.loads(raw) if raw else {},
                request.transport.get_extra_info("peername") if request.transport else ("", 0),
            )
        )
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
        finally:
            self.running -= 1
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("dropped on purpose")
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    def opts(self, url: str | None = None, key: str | None = "sk-test", **overrides: object) -> CallOptions:
        endpoint = Endpoint(url=url or self.base_url, name="test", api_key=SecretStr(key) if key else None)
        values: dict[str, object] = {"model": "m", "endpoint": endpoint, "timeout_s": 5, "max_retries": 2}
        return CallOptions(**(values | overrides))  # type: ignore[arg-type]

    def peers(self) -> set[tuple[str, int]]:
        return {s.peer for s in self.seen}


@asynccontextmanager
async def scripted_server(*replies: Reply) -> AsyncIterator[ScriptedModel]:
    """A scripted model on a free local port; `base_url` is its `/v1`."""
    scripted = ScriptedModel()
    scripted.replies = list(replies) or [ok()]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)  # any request is seen, whatever it asks
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    scripted.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield scripted
    finally:
        await runner.cleanup()
