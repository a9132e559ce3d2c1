"""One client for OpenAI-compatible chat completions, shared by chat-runner and judge.

It owns what every model call needs: pooled keep-alive connections per endpoint, a
concurrency limit per endpoint and per batch (held across replicas by services/runtime/models/leases.py
when the client is given shared leases), a per-attempt timeout, and retries with
exponential backoff and full jitter that honour `Retry-After` on 429. A call goes to the URL of
the endpoint its options name, with that endpoint's key only (services/runtime/models/endpoints.py
decides which endpoint a batch may use); redirects are not followed, so the key goes nowhere else.
"""

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from contracts.enums import FailureCategory
from services.runtime.models.breaker import ProviderBreaker, Sharing, StateChange
from services.runtime.models.endpoints import Endpoint
from services.runtime.models.http_pool import HttpEndpoint, open_endpoint
from services.runtime.models.leases import Leases, LocalLeases, batch_key, endpoint_key
from services.runtime.models.rate_budget import RateBudget
from services.runtime.models.retry_log import before_retry, retries_ended
from services.runtime.models.tokens import count_chat_tokens, count_tokens
from services.runtime.observability import metrics

log = logging.getLogger("evalbus.llm")


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
        self.attempt_log: tuple[Attempt, ...] = ()  # every attempt of the call, set by ChatClient.complete
        self.status: int | None = None  # the HTTP status, when the endpoint answered


OK = "ok"  # an Attempt's outcome when it gave a usable answer; else its FailureCategory's value
MAX_REASON = 300


@dataclass(frozen=True)
class Attempt:
    """One attempt of a call, as the call ledger bills it: what came of it, the HTTP status and
    tokens when the endpoint answered (tokens only for a usable answer), how long it took, and
    the wait before the next attempt (None after the last)."""

    outcome: str
    status: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float = 0.0
    retry_in_s: float | None = None
    reason: str = ""

    @classmethod
    def failed(cls, exc: ModelCallError, latency_ms: float) -> "Attempt":
        return cls(exc.category.value, exc.status, latency_ms=latency_ms, reason=str(exc)[:MAX_REASON])


_RETRYABLE = retry_if_exception(lambda e: isinstance(e, ModelCallError) and e.retryable)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int
    latency_ms: float
    attempts: int
    attempt_log: tuple[Attempt, ...] = ()  # every attempt, this one's last (empty from fakes)


@dataclass(frozen=True)
class CallOptions:
    model: str
    endpoint: Endpoint
    timeout_s: float
    max_retries: int
    temperature: float = 0.0
    max_tokens: int | None = None
    response_format: Mapping[str, Any] | None = None
    retry_base_s: float | None = None  # None: the client's
    # None: the client's. Other values get a breaker of their own on the endpoint (`_breaker`).
    breaker_fail_max: int | None = None
    breaker_reset_s: float | None = None


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
        error = ModelCallError(
            FailureCategory.RATE_LIMIT,
            f"HTTP 429: {snippet}",
            retryable=True,
            retry_after_s=parse_retry_after(retry_after),
        )
    elif status >= 500:
        error = ModelCallError(FailureCategory.SERVER_ERROR, f"HTTP {status}: {snippet}", retryable=True)
    elif status == 408:
        error = ModelCallError(FailureCategory.TIMEOUT, f"HTTP 408: {snippet}", retryable=True)
    else:
        error = ModelCallError(FailureCategory.CLIENT_ERROR, f"HTTP {status}: {snippet}", retryable=False)
    error.status = status
    return error


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


@dataclass
class _Endpoint:
    """Everything per base URL: its connections, breaker and rate budget."""

    http: HttpEndpoint
    breaker: ProviderBreaker
    budget: RateBudget | None


class ChatClient:
    """Pooled, limited, retrying chat-completions client. One per process."""

    def __init__(
        self,
        *,
        endpoint_concurrency: int,
        retry_base_s: float,
        retry_max_s: float,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 30.0,
        on_breaker_change: StateChange | None = None,
        rate_budget: Callable[[Endpoint], RateBudget | None] = lambda _: None,
        breaker_sharing: Sharing | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.breaker_sharing = breaker_sharing  # the replicas' shared breaker state, if any
        self._endpoint_concurrency = endpoint_concurrency
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._breaker_fail_max = breaker_fail_max
        self._breaker_reset_s = breaker_reset_s
        self._on_breaker_change = on_breaker_change
        self.breakers: dict[str, ProviderBreaker] = {}
        self._tuned_breakers: dict[tuple[str, int, float], ProviderBreaker] = {}
        self._rate_budget_for = rate_budget
        self._endpoints: dict[str, _Endpoint] = {}
        # The caps on calls in flight; per process unless shared leases are given.
        self.leases: Leases = leases or LocalLeases()
        self._policies: dict[tuple[int, float | None], tuple[stop_base, Callable[[RetryCallState], float]]] = {}

    def _new_breaker(
        self, base_url: str, fail_max: int, reset_s: float, sharing: Sharing | None = None
    ) -> ProviderBreaker:
        return ProviderBreaker(
            base_url,
            fail_max=fail_max,
            reset_s=reset_s,
            counts=counts_against_endpoint,
            on_change=self._on_breaker_change,
            sharing=sharing,
        )

    def _breaker(self, endpoint: _Endpoint, opts: CallOptions) -> ProviderBreaker:
        """The endpoint's breaker for these options. Batches that set their own threshold or reset
        share one breaker per endpoint and settings, beside the endpoint's own (which the others
        share): a breaker opens and pauses by one rule, so calls held to another rule count apart."""
        fail_max = opts.breaker_fail_max or self._breaker_fail_max
        reset_s = opts.breaker_reset_s or self._breaker_reset_s
        if (fail_max, reset_s) == (self._breaker_fail_max, self._breaker_reset_s):
            return endpoint.breaker
        key = (endpoint.breaker.endpoint, fail_max, reset_s)
        breaker = self._tuned_breakers.get(key)
        if breaker is None:
            breaker = self._tuned_breakers[key] = self._new_breaker(endpoint.breaker.endpoint, fail_max, reset_s)
        return breaker

    def _endpoint(self, target: Endpoint) -> _Endpoint:
        base_url = target.url
        endpoint = self._endpoints.get(base_url)
        if endpoint is None:
            # The endpoint's own breaker is shared by the service's replicas; a batch's tuned ones are not.
            breaker = self._new_breaker(base_url, self._breaker_fail_max, self._breaker_reset_s, self.breaker_sharing)
            endpoint = _Endpoint(
                # As many keep-alive connections as calls may be in flight, so none is opened per call.
                http=open_endpoint(base_url, self._endpoint_concurrency),
                breaker=breaker,
                budget=self._rate_budget_for(target),
            )
            self._endpoints[base_url] = endpoint
            self.breakers[base_url] = breaker
        return endpoint

    @asynccontextmanager
    async def _slot(self, base_url: str, batch_id: str, batch_limit: int) -> AsyncIterator[None]:
        # The batch's slot first, then the endpoint's, in every process: a call waiting for its
        # batch's turn holds none of the endpoint's slots, and one order everywhere means no two
        # calls ever wait for each other's slots.
        async with (
            self.leases.hold(batch_key(base_url, batch_id), batch_limit),
            self.leases.hold(endpoint_key(base_url), self._endpoint_concurrency),
        ):
            yield

    def _policy(self, max_retries: int, base_s: float | None) -> tuple[stop_base, Callable[[RetryCallState], float]]:
        """Stop and wait strategies (stateless, so built once per setting rather than per call)."""
        key = (max_retries, base_s)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = (stop_after_attempt(max_retries + 1), self._wait_for(base_s))
        return policy

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
        endpoint = self._endpoint(opts.endpoint)
        base_url = opts.endpoint.url
        http = endpoint.http
        body: dict[str, Any] = {"model": opts.model, "messages": messages, "temperature": opts.temperature}
        if opts.max_tokens is not None:
            body["max_tokens"] = opts.max_tokens
        if opts.response_format is not None:
            body["response_format"] = opts.response_format
        payload = orjson.dumps(body)
        headers = {**tags, "Content-Type": "application/json"}
        # Per request, not per session: connections are per URL, and the key is the endpoint's own.
        authorization = opts.endpoint.authorization()
        if authorization is not None:
            headers["Authorization"] = authorization
        prompt_texts = [m["content"] for m in messages]
        attempts = 0
        trail: list[Attempt] = []  # the call ledger's record, one per attempt
        started = 0.0

        breaker = self._breaker(endpoint, opts)
        budget = endpoint.budget
        # The provider counts prompt tokens plus the completion it may write.
        token_estimate = count_chat_tokens(prompt_texts) + (opts.max_tokens or 512) if budget else 0

        observed = metrics.model_endpoint(base_url)  # None while metrics are off

        async def attempt() -> Completion:
            nonlocal attempts, started
            attempts += 1
            started = 0.0
            try:
                if observed is not None:
                    return await observed.observe(attempts, breaker.call(one_call))
                return await breaker.call(one_call)
            except ModelCallError as exc:
                latency_ms = (time.perf_counter() - started) * 1000 if started else 0.0
                trail.append(Attempt.failed(exc, latency_ms))
                raise

        async def one_call() -> Completion:
            nonlocal started
            if budget is not None:  # waited for before taking a slot, so waiting holds nothing
                await budget.acquire(token_estimate)
            async with self._slot(base_url, batch_id, batch_limit):
                started = time.perf_counter()
                try:
                    # One deadline for sending, the status and the whole body.
                    async with (
                        asyncio.timeout(opts.timeout_s),
                        http.session.post(
                            http.completions_url,
                            data=payload,
                            headers=headers,
                            proxy=http.proxy,
                            allow_redirects=False,
                        ) as resp,
                    ):
                        status = resp.status
                        content = await resp.read()
                except TimeoutError as exc:
                    raise ModelCallError(
                        FailureCategory.TIMEOUT, f"no answer within {opts.timeout_s:g}s", retryable=True
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise ModelCallError(
                        FailureCategory.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True
                    ) from exc
                latency_ms = (time.perf_counter() - started) * 1000
            if status != 200:
                raise classify_status(status, resp.headers.get("Retry-After"), content.decode("utf-8", "replace"))
            try:
                text, finish, tin, tout = parse_completion(content, prompt_texts)
            except ModelCallError as exc:
                exc.status = status
                raise
            trail.append(Attempt(OK, status, tin, tout, latency_ms))
            return Completion(text, finish, tin, tout, latency_ms, attempts, tuple(trail))

        # Most calls succeed at once: the first attempt runs without tenacity's per-call
        # bookkeeping (docs/decisions.md). If it fails, tenacity takes over and
        # sees it replayed as its own first attempt, so stops, waits and Retry-After are unchanged.
        try:
            return await attempt()
        except ModelCallError as exc:
            if not exc.retryable or opts.max_retries == 0:
                exc.attempts, exc.attempt_log = attempts, tuple(trail)
                raise
            first_error: ModelCallError | None = exc

        async def replay_then_attempt() -> Completion:
            nonlocal first_error
            if first_error is not None:
                error, first_error = first_error, None
                raise error
            return await attempt()

        stop, wait = self._policy(opts.max_retries, opts.retry_base_s)
        logged = before_retry(base_url, batch_id, opts.max_retries + 1, lambda: breaker.state)

        def wait_noted(state: RetryCallState) -> float:
            delay = wait(state)
            if not stop(state):  # (tenacity asks for the wait before it checks the stop)
                trail[-1] = replace(trail[-1], retry_in_s=round(delay, 3))
            return delay

        retrying = AsyncRetrying(stop=stop, wait=wait_noted, retry=_RETRYABLE, reraise=True, before_sleep=logged)
        try:
            completion: Completion = await retrying(replay_then_attempt)
        except ModelCallError as exc:
            exc.attempts, exc.attempt_log = attempts, tuple(trail)
            retries_ended(base_url, batch_id, attempts, opts.max_retries + 1, exc, breaker.state)
            raise
        retries_ended(base_url, batch_id, attempts, opts.max_retries + 1, None, breaker.state)
        return completion

    async def aclose(self) -> None:
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for endpoint in endpoints:
            await endpoint.http.session.close()
        await self.leases.aclose()
