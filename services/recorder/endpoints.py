"""Which model endpoints a batch's calls use, keyed as its breaker events are, so that a batch's
progress and report show the breakers of its own endpoints, not every breaker in the system.

The endpoints are resolved as chat-runner and judge resolve them (services/runtime/models/
endpoints.py, from the same EVALBUS_ENDPOINTS and base URL settings), once, when the batch is
accepted. Breaker events name the URL their client called; both sides are compared normalised
(scheme, host, port, path without a trailing slash), so two spellings of one URL match.
"""

import functools
import logging

from contracts.inputs import BatchConfig
from services.runtime.models.endpoints import EndpointRejected, Endpoints, normalised
from services.runtime.settings import get_settings

log = logging.getLogger("evalbus.recorder")


def endpoint_key(url: str) -> str:
    """`HTTP://Host:80/v1/` and `http://host/v1` -> `http://host:80/v1`."""
    scheme, host, port, path = normalised(url)
    return f"{scheme}://{host}:{port}{path}"


@functools.cache
def configured() -> Endpoints:
    """The operator's endpoints as the model-calling services see them (names and URLs, no keys)."""
    try:
        return Endpoints.from_settings(get_settings(), read_keys=False)
    except Exception as exc:  # a setting the recorder cannot read: batches' own URLs still count
        log.warning("endpoint settings unusable (%r): breakers are attributed by batches' base URLs only", exc)
        return Endpoints([], allow_unlisted=True)


def batch_endpoint_keys(cfg: BatchConfig, endpoints: Endpoints | None = None) -> list[str]:
    """The keys of the endpoints a batch's model and judge calls go to."""
    eps = endpoints or configured()
    urls: list[str] = []
    try:
        urls.append(eps.for_model(cfg).url)
    except EndpointRejected:
        if cfg.base_url:  # allowed where the runner is (unlisted URLs): it calls this URL itself
            urls.append(cfg.base_url)
    if cfg.judge_enabled:
        try:
            urls.append(eps.for_judge(cfg).url)
        except EndpointRejected:
            url = cfg.judge_base_url or (None if cfg.judge_endpoint else cfg.base_url)
            if url:
                urls.append(url)
    return sorted({endpoint_key(url) for url in urls})
