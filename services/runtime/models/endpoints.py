"""Which model endpoint a batch's calls go to, and which key (if any) goes with them.

Keys belong to the endpoints the operator configured (EVALBUS_ENDPOINTS, plus the implicit
`default` and `judge` endpoints of EVALBUS_MODEL_BASE_URL / EVALBUS_JUDGE_BASE_URL with
EVALBUS_API_KEY), never to a URL an event names. A batch names an endpoint, or a URL that is one
of theirs (compared normalised: scheme, host, port, path without a trailing slash), and the call
then goes to the configured URL, not to the event's spelling of it. Any other URL is refused, or,
where the operator allows unlisted endpoints, called without a key.
"""

import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import SecretStr

from contracts.inputs import BatchConfig
from contracts.urls import check_base_url
from services.runtime.settings import EndpointSetting, Settings, get_settings

log = logging.getLogger("evalbus.endpoints")

DEFAULT = "default"  # the model's endpoint when a batch names none
JUDGE = "judge"  # the judge's endpoint when a batch names none
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud metadata services answer on these names as well as on link-local addresses.
_METADATA_HOSTS = {"metadata", "metadata.google.internal", "metadata.goog"}


class EndpointRejected(Exception):
    """A batch names an endpoint or URL its calls may not go to; the message says why (no secrets)."""


@dataclass(frozen=True)
class Endpoint:
    """Where calls go. The key, if any, is sent to this URL and nowhere else."""

    url: str
    name: str | None = None  # None: an unlisted URL the operator allows, called without a key
    api_key: SecretStr | None = field(default=None, repr=False, compare=False)

    def authorization(self) -> str | None:
        return f"Bearer {self.api_key.get_secret_value()}" if self.api_key else None

    def describe(self) -> str:
        return f"endpoint {self.name!r}" if self.name else f"unlisted URL {self.url}"


def normalised(url: str) -> tuple[str, str, int, str]:
    """What makes two base URLs the same endpoint: scheme, host, port and path (no trailing slash)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed  # one spelling per IP literal
    return scheme, host, parts.port or _DEFAULT_PORTS.get(scheme, 0), parts.path.rstrip("/")


def _is_metadata_host(url: str) -> bool:
    """A link-local address or a metadata host name: never called on a batch's say-so."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host in _METADATA_HOSTS:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_link_local or bool(mapped and mapped.is_link_local)


def _read_key(name: str, setting: EndpointSetting) -> SecretStr | None:
    if setting.api_key is not None:
        return setting.api_key
    if setting.api_key_env is not None:
        value = os.environ.get(setting.api_key_env, "").strip()
        if not value:
            raise RuntimeError(f"endpoint {name!r}: environment variable {setting.api_key_env} is not set")
        return SecretStr(value)
    if setting.api_key_file is not None:
        try:
            value = setting.api_key_file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"endpoint {name!r}: cannot read its key file ({exc.strerror})") from None
        if not value:
            raise RuntimeError(f"endpoint {name!r}: its key file is empty")
        return SecretStr(value)
    return None


class Endpoints:
    """The operator's endpoints, by name, and the rules for what a batch may name."""

    def __init__(
        self, endpoints: Iterable[Endpoint], *, allow_unlisted: bool = False, default: str = DEFAULT, judge: str = JUDGE
    ) -> None:
        self._named: dict[str, Endpoint] = {}
        for ep in endpoints:
            if not ep.name:
                raise ValueError("a configured endpoint needs a name")
            check_base_url(ep.url)
            self._named.setdefault(ep.name, ep)
        self.allow_unlisted = allow_unlisted
        self._default = default
        self._judge = judge

    @classmethod
    def from_settings(cls, settings: Settings, *, read_keys: bool = True) -> "Endpoints":
        """The configured endpoints; `read_keys=False` for a service that only checks names and URLs."""
        explicit = [
            Endpoint(url=s.url, name=name, api_key=_read_key(name, s) if read_keys else None)
            for name, s in settings.endpoints.items()
        ]
        names = {ep.name for ep in explicit}
        key = settings.resolved_api_key() if read_keys else None
        implicit: list[Endpoint] = []
        if DEFAULT not in names:
            implicit.append(Endpoint(url=settings.model_base_url, name=DEFAULT, api_key=key))
        if JUDGE not in names:
            if settings.judge_base_url:
                implicit.append(Endpoint(url=settings.judge_base_url, name=JUDGE, api_key=key))
            else:  # the judge shares the default endpoint, whichever that is
                default = next((ep for ep in explicit if ep.name == DEFAULT), None) or implicit[0]
                implicit.append(Endpoint(url=default.url, name=JUDGE, api_key=default.api_key))
        return cls([*explicit, *implicit], allow_unlisted=settings.allow_unlisted_endpoints)

    @property
    def names(self) -> list[str]:
        return sorted(self._named)

    def _listing(self) -> str:
        """The configured names for a rejection (bounded; the operator's URLs are not shown)."""
        names = self.names
        return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")

    def named(self, name: str) -> Endpoint:
        ep = self._named.get(name)
        if ep is None:
            raise EndpointRejected(f"no endpoint named {name!r} is configured (configured: {self._listing()})")
        return ep

    def for_url(self, url: str) -> Endpoint:
        """The configured endpoint at `url` (the first in EVALBUS_ENDPOINTS order, then `default`,
        then `judge`), else (if allowed) `url` itself without a key."""
        try:
            check_base_url(url)
        except ValueError as exc:
            raise EndpointRejected(f"base URL refused: {exc}") from None
        wanted = normalised(url)
        # Several endpoints at one URL (e.g. two accounts): the first configured. Whichever it is,
        # its key goes to its own URL; naming the endpoint picks another.
        match = next((ep for ep in self._named.values() if normalised(ep.url) == wanted), None)
        if match is not None:
            return match
        if not self.allow_unlisted:
            raise EndpointRejected(
                f"base URL {url} is not a configured endpoint; name one ({self._listing()}) or give one of their URLs"
            )
        if _is_metadata_host(url):
            raise EndpointRejected(f"base URL {url} is a link-local or metadata address")
        return Endpoint(url=url)

    def _choose(self, name: str | None, url: str | None) -> Endpoint | None:
        if name is not None:
            ep = self.named(name)
            if url is not None and normalised(url) != normalised(ep.url):
                raise EndpointRejected(f"base URL {url} is not the URL of endpoint {name!r}: give one or the other")
            return ep
        return self.for_url(url) if url is not None else None

    def for_model(self, cfg: BatchConfig) -> Endpoint:
        """Where the model under test is called."""
        return self._choose(cfg.endpoint, cfg.base_url) or self.named(self._default)

    def for_judge(self, cfg: BatchConfig) -> Endpoint:
        """Where the judge is called: its own endpoint, else the model's, else the judge default."""
        return (
            self._choose(cfg.judge_endpoint, cfg.judge_base_url)
            or self._choose(cfg.endpoint, cfg.base_url)
            or self.named(self._judge)
        )

    def check(self, cfg: BatchConfig) -> str | None:
        """Why a batch's endpoints are refused, or None."""
        try:
            self.for_model(cfg)
        except EndpointRejected as exc:
            return f"model endpoint: {exc}"
        if cfg.judge_enabled:
            try:
                self.for_judge(cfg)
            except EndpointRejected as exc:
                return f"judge endpoint: {exc}"
        return None


def check_batch_endpoints(config: BatchConfig, settings: Settings | None = None) -> str | None:
    """Why a batch may not use the endpoints it names (the generator's check at the start), or None."""
    return Endpoints.from_settings(settings or get_settings(), read_keys=False).check(config)
