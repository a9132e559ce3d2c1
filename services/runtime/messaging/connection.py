"""The NATS connection a service holds: a broker that reconnects forever and exits the process when
the connection is closed for good (so a supervisor restarts it)."""

import logging
import os
from typing import TYPE_CHECKING

from faststream.nats import NatsBroker, NatsUserPassword

if TYPE_CHECKING:
    from nats.js import JetStreamContext

log = logging.getLogger("evalbus.bus")


class _Lifecycle:
    stopping = False


def inbox_prefix(service: str) -> str:
    # nats-py appends its random token right after the prefix: the trailing dot keeps replies
    # inside `_INBOX.<service>.>`, which is all a service may subscribe to under permissions.
    return f"_INBOX.{service}."


def make_broker(service: str, nats_url: str, user: str | None = None, password: str | None = None) -> NatsBroker:
    """A broker that reconnects forever and exits the process if the connection is closed for good."""

    async def on_error(exc: Exception) -> None:
        # Permission violations reach only this callback; elsewhere they look like timeouts.
        log.error("nats error in %s: %r", service, exc)

    async def on_disconnect() -> None:
        # A deliberate close (drain on shutdown) calls this too: that is no outage.
        if _Lifecycle.stopping:
            log.info("%s: NATS connection closing for shutdown", service)
        else:
            log.warning("%s disconnected from NATS; reconnecting", service)

    async def on_reconnect() -> None:
        log.warning("%s reconnected to NATS", service)

    async def on_closed() -> None:
        if _Lifecycle.stopping:
            log.info("%s: NATS connection closed (shutdown)", service)
            return
        log.critical("%s: NATS connection closed for good; exiting so a supervisor restarts it", service)
        os._exit(3)

    return NatsBroker(
        nats_url.split(","),
        name=f"evalbus-{service}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
        inbox_prefix=inbox_prefix(service).rstrip("."),  # the connection adds its own dot
        security=NatsUserPassword(username=user, password=password or "") if user else None,
        graceful_timeout=30.0,
        logger=logging.getLogger(f"evalbus.{service}.broker"),
        log_level=logging.DEBUG,  # per-message logs stay below the WARNING level set in service.py
        js_options={"publish_async_max_pending": 4000},
    )


def mark_stopping() -> None:
    """Called on a deliberate shutdown so the closed-connection callback does not exit(3)."""
    _Lifecycle.stopping = True


def jetstream(broker: NatsBroker) -> "JetStreamContext":
    return broker.config.connection_state.stream
