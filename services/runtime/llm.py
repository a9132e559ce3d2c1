"""One client for OpenAI-compatible chat completions, shared by chat-runner and judge.

It owns what every model call needs: pooled keep-alive connections per endpoint, a
concurrency limit per endpoint and per batch, a per-attempt timeout, and retries with
exponential backoff and full jitter that honour `Retry-After` on 429.
"""

import asyncio
import email.utils
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from contracts.enums import FailureCategory
from services.runtime.breaker import ProviderBreaker, StateChange
from services.runtime.rate_budget import RateBudget
from services.runtime.tokens import count_chat_tokens, count_tokens

log = logging.getLogger("evalbus.llm")
POOL_SIZE = 8  # connections per httpx client (see ChatClient._client)


# Failures that say the endpoint is unhealthy; a 400 or an unparseable body does not.
UNHEALTHY = {
    FailureCategory.TIMEOUT,
    FailureCategory.CONNECTION,
    FailureCategory.SERVER_ERROR,
    FailureCategory.RATE_LIMIT,
}


def counts_against_endpoint(exc: BaseException) -> bool:
    return isinstance(exc, ModelCallError) and exc.category in UNHEALTHY


class ModelCallError(Exception):
    """A model call that did not give a usable answer, with why and whether a retry may help."""

    def __init__(self, category: FailureCategory, message: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.category = category
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = 1


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    latency_ms: float
    attempts: int


@dataclass(frozen=True)
class CallOptions:
    model: str
    base_url: str
    timeout_s: float
    max_retries: int
    temperature: float = 0.0
    max_tokens: int | None = None
    response_format: Mapping[str, Any] | None = None
    retry_base_s: float | None = None  # None: the client's


class ChatModel(Protocol):
    """What chat-runner and judge need from a model client (a fake in unit tests)."""

    async def complete(
        self,
        messages: list[dict[str, str]],
        opts: CallOptions,
        *,
        batch_id: str,
        batch_limit: int,
        tags: Mapping[str, str],
    ) -> Completion: ...


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_status(status: int, retry_after: str | None, body: str) -> ModelCallError:
    snippet = body[:300]
    if status == 429:
        return ModelCallError(
            FailureCategory.RATE_LIMIT,
            f"HTTP 429: {snippet}",
            retryable=True,
            retry_after_s=parse_retry_after(retry_after),
        )
    if status >= 500:
        return ModelCallError(FailureCategory.SERVER_ERROR, f"HTTP {status}: {snippet}", retryable=True)
    if status == 408:
        return ModelCallError(FailureCategory.TIMEOUT, f"HTTP 408: {snippet}", retryable=True)
    return ModelCallError(FailureCategory.CLIENT_ERROR, f"HTTP {status}: {snippet}", retryable=False)


def parse_completion(payload: bytes, prompt_texts: list[str]) -> tuple[str, str | None, int, int]:
    """Text, finish reason and token counts from a chat-completions body; API counts preferred."""
    try:
        data = orjson.loads(payload)
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ModelCallError(
            FailureCategory.BAD_RESPONSE, f"unusable completion body: {exc!r}", retryable=True
        ) from exc
    if not isinstance(text, str):
        raise ModelCallError(FailureCategory.BAD_RESPONSE, "completion content is not text", retryable=True)
    usage = data.get("usage") or {}
    tokens_in = usage.get("prompt_tokens")
    tokens_out = usage.get("completion_tokens")
    if not isinstance(tokens_in, int):
        tokens_in = count_chat_tokens(prompt_texts)
    if not isinstance(tokens_out, int):
        tokens_out = count_tokens(text)
    return text, choice.get("finish_reason"), tokens_in, tokens_out


class ChatClient:
    """Pooled, limited, retrying chat-completions client. One per process."""

    def __init__(
        self,
        *,
        api_key: str | None,
        endpoint_concurrency: int,
        retry_base_s: float,
        retry_max_s: float,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 30.0,
        on_breaker_change: StateChange | None = None,
        rate_budget: Callable[[str], RateBudget | None] = lambda _: None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api_key = api_key
        self._endpoint_concurrency = endpoint_concurrency
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._transport = transport
        self._breaker_fail_max = breaker_fail_max
        self._breaker_reset_s = breaker_reset_s
        self._on_breaker_change = on_breaker_change
        self.breakers: dict[str, ProviderBreaker] = {}
        self._rate_budget_for = rate_budget
        self._budgets: dict[str, RateBudget | None] = {}
        self._clients: dict[str, list[httpx.AsyncClient]] = {}
        self._turn = itertools.count()
        self._endpoint_slots: dict[str, asyncio.Semaphore] = {}
        self._batch_slots: dict[tuple[str, str], tuple[int, asyncio.Semaphore]] = {}

    def _client(self, base_url: str) -> httpx.AsyncClient:
        """One of the endpoint's small pooled clients, in turn.

        httpcore's pool scans every connection it holds (probing each socket) whenever a request
        starts or ends: with one pool of 64 that was half the service's CPU. Pools of 8 keep the
        scan short; together they still allow `endpoint_concurrency` connections."""
        clients = self._clients.get(base_url)
        if clients is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            per_pool = min(POOL_SIZE, self._endpoint_concurrency)
            limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
            clients = [
                httpx.AsyncClient(
                    base_url=base_url.rstrip("/"),
                    headers=headers,
                    limits=limits,
                    transport=self._transport,
                    timeout=None,
                )
                for _ in range(math.ceil(self._endpoint_concurrency / per_pool))
            ]
            self._clients[base_url] = clients
            self._endpoint_slots[base_url] = asyncio.Semaphore(self._endpoint_concurrency)
            self.breakers[base_url] = ProviderBreaker(
                base_url,
                fail_max=self._breaker_fail_max,
                reset_s=self._breaker_reset_s,
                counts=counts_against_endpoint,
                on_change=self._on_breaker_change,
            )
            self._budgets[base_url] = self._rate_budget_for(base_url)
        return clients[next(self._turn) % len(clients)]

    @asynccontextmanager
    async def _slot(self, base_url: str, batch_id: str, batch_limit: int) -> AsyncIterator[None]:
        key = (base_url, batch_id)
        entry = self._batch_slots.get(key)
        if entry is None or entry[0] != batch_limit:
            entry = (batch_limit, asyncio.Semaphore(batch_limit))
            self._batch_slots[key] = entry
        sem = entry[1]
        try:
            async with sem, self._endpoint_slots[base_url]:
                yield
        finally:
            # A batch nobody holds or waits for gives its semaphore back, so a long-running
            # service does not keep one per batch it ever saw. (No await between the check and
            # the delete, so no other call can slip in.)
            idle = sem._value == batch_limit and not sem._waiters
            if self._batch_slots.get(key) is entry and idle:
                del self._batch_slots[key]

    def _wait_for(self, base_s: float | None) -> Callable[[RetryCallState], float]:
        backoff = wait_random_exponential(
            multiplier=self._retry_base_s if base_s is None else base_s, max=self._retry_max_s
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, ModelCallError) and exc.retry_after_s is not None:
                return min(exc.retry_after_s, self._retry_max_s)  # the server said when
            return float(backoff(state))

        return wait

    async def complete(
        self,
        messages: list[dict[str, str]],
        opts: CallOptions,
        *,
        batch_id: str,
        batch_limit: int,
        tags: Mapping[str, str],
    ) -> Completion:
        """Call the model until it answers or retries run out; raises ModelCallError with attempts set."""
        client = self._client(opts.base_url)
        body: dict[str, Any] = {"model": opts.model, "messages": messages, "temperature": opts.temperature}
        if opts.max_tokens is not None:
            body["max_tokens"] = opts.max_tokens
        if opts.response_format is not None:
            body["response_format"] = opts.response_format
        payload = orjson.dumps(body)
        headers = {"Content-Type": "application/json", **tags}
        prompt_texts = [m["content"] for m in messages]
        attempts = 0

        breaker = self.breakers[opts.base_url]
        budget = self._budgets[opts.base_url]
        # The provider counts prompt tokens plus the completion it may write.
        token_estimate = count_chat_tokens(prompt_texts) + (opts.max_tokens or 512) if budget else 0

        async def attempt() -> Completion:
            nonlocal attempts
            attempts += 1
            return await breaker.call(one_call)

        async def one_call() -> Completion:
            if budget is not None:  # waited for before taking a slot, so waiting holds nothing
                await budget.acquire(token_estimate)
            async with self._slot(opts.base_url, batch_id, batch_limit):
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(opts.timeout_s):
                        resp = await client.post("/chat/completions", content=payload, headers=headers)
                except TimeoutError as exc:
                    raise ModelCallError(
                        FailureCategory.TIMEOUT, f"no answer within {opts.timeout_s:g}s", retryable=True
                    ) from exc
                except httpx.TransportError as exc:
                    raise ModelCallError(
                        FailureCategory.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True
                    ) from exc
                latency_ms = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                raise classify_status(resp.status_code, resp.headers.get("Retry-After"), resp.text)
            text, finish, tin, tout = parse_completion(resp.content, prompt_texts)
            return Completion(text, finish, tin, tout, latency_ms, attempts)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(opts.max_retries + 1),
            wait=self._wait_for(opts.retry_base_s),
            retry=retry_if_exception(lambda e: isinstance(e, ModelCallError) and e.retryable),
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except ModelCallError as exc:
            exc.attempts = attempts
            raise

    async def aclose(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                await client.aclose()
        self._clients.clear()
