"""Liveness of a service: a NATS micro service with a `status` endpoint (so `nats micro ls` lists
every evalbus service and `evalbus health` asks them), and a heartbeat file for container probes."""

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import nats.micro
import orjson
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import Service

from contracts import subjects
from services.runtime.messaging.consumer import Consumer

HEARTBEAT_EVERY_S = 5.0


def heartbeat_path(directory: Path, service: str) -> Path:
    return directory / f"evalbus-{service}.alive"


class Health:
    def __init__(self, service: str, nc_getter: Callable[[], Client]) -> None:
        self.service = service
        self._nc = nc_getter
        self.consumers: list[Consumer] = []

    @property
    def healthy(self) -> bool:
        nc = self._nc()
        return nc.is_connected and all(c.healthy for c in self.consumers)

    def snapshot(self) -> dict[str, object]:
        nc = self._nc()
        return {
            "service": self.service,
            "pid": os.getpid(),
            "healthy": self.healthy,
            "connected": nc.is_connected,
            "consumers": [c.status() for c in self.consumers],
        }

    async def serve(self) -> Service:
        nc = self._nc()
        svc = await nats.micro.add_service(
            nc, name=f"evalbus-{self.service}", version="0.1.0", description=f"evalbus {self.service}"
        )

        async def status(req: Request) -> None:
            await req.respond(orjson.dumps(self.snapshot()))

        await svc.add_group(name=subjects.control(self.service)).add_endpoint(name="status", handler=status)
        return svc

    async def beat_forever(self, directory: Path) -> None:
        path = heartbeat_path(directory, self.service)
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            if self.healthy:
                path.touch()
            await asyncio.sleep(HEARTBEAT_EVERY_S)
