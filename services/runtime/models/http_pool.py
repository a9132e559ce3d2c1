"""Keep-alive HTTP connections to one model endpoint (aiohttp), sized to its concurrency.

aiohttp rather than httpx: its C-accelerated client costs far less CPU per call
(docs/decisions.md has the figures).
"""

import urllib.parse
import urllib.request
from dataclasses import dataclass

import aiohttp
from yarl import URL

# Idle connections stay open this long; well past the gap between calls of a running batch.
KEEPALIVE_S = 30.0


@dataclass(frozen=True)
class HttpEndpoint:
    session: aiohttp.ClientSession
    completions_url: URL
    proxy: str | None


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), read once
    per endpoint: aiohttp's `trust_env` would parse the environment again on every request."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def open_endpoint(base_url: str, pool_size: int) -> HttpEndpoint:
    """A session with up to `pool_size` keep-alive connections; call inside the running loop.
    It carries no key: each request adds its endpoint's own (ChatClient)."""
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=0, keepalive_timeout=KEEPALIVE_S)
    session = aiohttp.ClientSession(
        connector=connector,
        # Each attempt runs under its own asyncio.timeout (ChatClient); aiohttp's default 5-minute
        # total would otherwise cut long calls on its own terms.
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
    )
    return HttpEndpoint(
        session=session,
        completions_url=URL(base_url.rstrip("/") + "/chat/completions"),
        proxy=env_proxy(base_url),
    )
