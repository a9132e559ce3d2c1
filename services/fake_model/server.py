"""The aiohttp app: OpenAI-style chat completions with deterministic answers, judgments and faults."""

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from services.fake_model.chat import chat_answer
from services.fake_model.faults import FaultOutcome, FaultPlanner, FaultRates, body_digest
from services.fake_model.judge_requests import is_judge_request
from services.fake_model.settings import FakeModelSettings
from services.fake_model.tokens import completion_tokens
from services.fake_model.verdicts import judge_reply
from services.runtime.malloc import trim_heap_forever
from services.runtime.models.tokens import count_chat_tokens, encoding

MODELS = ("evalbus-fake", "evalbus-fake-judge")

KINDS = ("chat", "judge")
_TWO_64 = float(1 << 64)
# asyncio waits on epoll in whole milliseconds, rounded up, so a sleep ends 0-1 ms late (0.4 ms
# at the median here): aim that much early so the latency served is the latency configured.
TIMER_LATE_S = 0.0004
# Long enough for in-flight answers to finish, short enough that hung requests don't stall shutdown.
SHUTDOWN_TIMEOUT_S = 2.0


class InvalidRequest(ValueError):
    """The request is not a chat completion request we can answer (HTTP 400)."""


@dataclass(frozen=True)
class ChatRequest:
    model: str
    contents: list[str]
    question: str
    max_tokens: int | None


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text parts carry tokens we can count
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise InvalidRequest("message content must be a string or a list of content parts")


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty list")
    contents: list[str] = []
    question = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'")
        text = _content_text(message.get("content"))
        contents.append(text)
        if message["role"] == "user":
            question = text
    model = body.get("model", MODELS[0])
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise InvalidRequest("'max_tokens' must be a positive integer")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
        raise InvalidRequest("'temperature' must be a number")
    if body.get("response_format") is not None and not isinstance(body["response_format"], dict):
        raise InvalidRequest("'response_format' must be an object")
    if body.get("stream"):
        raise InvalidRequest("streaming is not supported by the fake model")
    return ChatRequest(model=model, contents=contents, question=question, max_tokens=max_tokens)


class RequestLog:
    """One JSON line per request, appended to a file kept open for the server's lifetime."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed on cleanup

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record).decode() + "\n")

    def close(self) -> None:
        self._file.close()


@dataclass
class State:
    settings: FakeModelSettings
    planner: FaultPlanner
    log: RequestLog | None
    stats: dict[str, Counter[str]] = field(default_factory=lambda: {k: Counter() for k in (*KINDS, "invalid")})
    # Requests being answered now, and the most at once since start: what a concurrency cap
    # across replicas is checked against.
    in_flight: int = 0
    peak_in_flight: int = 0

    # Completions answered (HTTP 200, not given up on by the client) and their usage: what a
    # provider would bill, for tests of the call ledger.
    served: dict[str, Counter[str]] = field(default_factory=lambda: {k: Counter() for k in KINDS})

    def serve(self, kind: str, answer: "Answer") -> web.Response:
        served = self.served[kind]
        served["responses"] += 1
        served["tokens_in"] += answer.tokens_in
        served["tokens_out"] += answer.tokens_out
        return answer.response


STATE = web.AppKey("state", State)


@dataclass(frozen=True)
class Answer:
    response: web.Response
    tokens_in: int
    tokens_out: int


def _completion(req: ChatRequest, request_hash: str, answer: str) -> Answer:
    text, n_completion, cut = completion_tokens(answer, req.max_tokens)
    n_prompt = count_chat_tokens(req.contents)
    response = _json(
        {
            "id": f"chatcmpl-{request_hash}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if cut else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            },
        }
    )
    return Answer(response, n_prompt, n_completion)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": {"message": message, "type": kind}}, status=status, headers=headers)


def _answer(state: State, req: ChatRequest, judge_request: bool, outcome: FaultOutcome, digest: bytes) -> str:
    if not judge_request:
        return chat_answer(req.model, req.question, adversarial=state.settings.adversarial)
    return judge_reply(
        req.question,
        malformed=outcome is FaultOutcome.MALFORMED,
        variant=digest[15],
        malformed_batch_marker=state.settings.malformed_batch_marker,
    )


async def chat_completions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    try:
        return await _chat_completion(request, state)
    finally:
        state.in_flight -= 1


async def _chat_completion(request: web.Request, state: State) -> web.Response:
    settings = state.settings
    started = time.perf_counter()
    if settings.api_key is not None and request.headers.get("Authorization") != f"Bearer {settings.api_key}":
        state.stats["invalid"]["401"] += 1
        return _error(401, "missing or wrong API key", "invalid_api_key")
    try:
        body = orjson.loads(await request.read())
        req = parse_request(body)
    except (orjson.JSONDecodeError, InvalidRequest) as exc:
        state.stats["invalid"]["400"] += 1
        message = str(exc) if isinstance(exc, InvalidRequest) else f"request body is not valid JSON: {exc}"
        return _error(400, message, "invalid_request_error")

    digest = body_digest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    request_hash = digest[:8].hex()
    judge_request = is_judge_request(body)
    kind = KINDS[judge_request]
    outcome = state.planner.decide(digest, judge=judge_request)
    state.stats[kind][outcome.value] += 1
    try:
        delay_ms = settings.latency_ms + settings.jitter_ms * (int.from_bytes(digest[8:16], "big") / _TWO_64)
        # The latency is the time to the response, as with a real API: the response is built
        # first and the wait is what is left of it, so this server's own CPU is not added on top.
        response = None
        if outcome in (FaultOutcome.OK, FaultOutcome.MALFORMED):
            response = _completion(req, request_hash, _answer(state, req, judge_request, outcome, digest))
        remaining_s = started + delay_ms / 1000 - time.perf_counter() - TIMER_LATE_S
        if remaining_s > 0:
            await asyncio.sleep(remaining_s)
        if outcome is FaultOutcome.SERVER_ERROR:
            return _error(500, "injected server error", "server_error")
        if outcome is FaultOutcome.RATE_LIMITED:
            return _error(
                429,
                "injected rate limit",
                "rate_limit_error",
                headers={"Retry-After": f"{settings.retry_after_s:g}"},
            )
        if outcome is FaultOutcome.HANG:
            await asyncio.sleep(settings.hang_s)
        return state.serve(
            kind, response or _completion(req, request_hash, _answer(state, req, judge_request, outcome, digest))
        )
    finally:
        # In `finally` so a hang the client gave up on (handler cancelled) is still logged.
        if state.log is not None:
            record: dict[str, Any] = {
                "ts": round(time.time(), 3),
                "kind": kind,
                "model": req.model,
                "request_hash": request_hash,
                "outcome": outcome.value,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            if (prompt_id := request.headers.get("X-Evalbus-Prompt-Id")) is not None:
                record["prompt_id"] = prompt_id
            if (stage := request.headers.get("X-Evalbus-Stage")) is not None:
                record["stage"] = stage
            state.log.write(record)


async def health(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def models(_: web.Request) -> web.Response:
    return _json(
        {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "evalbus"} for m in MODELS]}
    )


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counts = state.stats
    by_kind = {kind: {o.value: counts[kind][o.value] for o in FaultOutcome} for kind in KINDS}
    served = {kind: {k: state.served[kind][k] for k in ("responses", "tokens_in", "tokens_out")} for kind in KINDS}
    return _json(
        {
            **by_kind,
            "invalid": counts["invalid"]["400"],
            "unauthorized": counts["invalid"]["401"],
            "total": sum(sum(c.values()) for c in counts.values()),
            "in_flight": request.app[STATE].in_flight,
            "peak_in_flight": request.app[STATE].peak_in_flight,
            # per kind, and in all: responses answered and their usage (what a provider bills)
            "served": {
                **served,
                "tokens_in": sum(v["tokens_in"] for v in served.values()),
                "tokens_out": sum(v["tokens_out"] for v in served.values()),
            },
        }
    )


def create_app(settings: FakeModelSettings) -> web.Application:
    encoding()  # load the BPE ranks now, not on the first request
    rates = FaultRates(
        error_500=settings.error_rate_500,
        rate_limit=settings.rate_limit_rate,
        hang=settings.hang_rate,
        malformed=settings.malformed_rate,
    )
    log = RequestLog(settings.request_log) if settings.request_log else None
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE] = State(settings=settings, planner=FaultPlanner(rates, seed=settings.seed), log=log)

    async def close_log(_: web.Application) -> None:
        if log is not None:
            log.close()

    app.on_cleanup.append(close_log)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/stats", stats)
    return app


async def start_server(settings: FakeModelSettings) -> tuple[web.AppRunner, int]:
    """Serve in the running event loop; returns the runner (call `await runner.cleanup()` to stop)
    and the bound port (useful with port 0)."""
    runner = web.AppRunner(
        create_app(settings),
        access_log=None,  # per-request logging would dominate the cost of a fake answer
        handler_cancellation=True,  # a client that gives up on a hang frees its handler
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


async def serve(settings: FakeModelSettings) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows event loops have no signal handlers; there Ctrl+C still ends the process.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner, port = await start_server(settings)
    print(f"fake model listening on http://{settings.host}:{port}/v1", flush=True)
    trimmer = asyncio.create_task(trim_heap_forever())
    try:
        await stop.wait()
    finally:
        trimmer.cancel()
        await runner.cleanup()
