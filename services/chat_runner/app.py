"""Chat-runner service: `faststream run --factory services.chat_runner.app:create_app`."""

from faststream import FastStream
from nats.aio.msg import Msg

from contracts.events import PromptQueued
from contracts.topology import CHAT_RUNNER_QUEUED
from services.chat_runner.logic import run_prompt
from services.runtime.bus import jetstream
from services.runtime.cancels import CancelledBatches
from services.runtime.model_client import chat_client
from services.runtime.service import consume, new_service, run_in_background
from services.runtime.settings import get_settings
from services.runtime.worker import work_one

SERVICE = "chat-runner"


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    client = chat_client(settings, broker, SERVICE)
    app.after_shutdown(client.aclose)
    cancelled = CancelledBatches()
    run_in_background(app, lambda: cancelled.watch(jetstream(broker)))

    async def work(evt: PromptQueued) -> object:
        return await run_prompt(client, evt, settings.model_base_url, cancelled)

    async def on_prompt_queued(raw: Msg) -> None:
        await work_one(jetstream(broker), SERVICE, raw, PromptQueued, work, binding.keepalive_s)

    binding = consume(
        app,
        broker,
        SERVICE,
        CHAT_RUNNER_QUEUED,
        on_message=on_prompt_queued,
        slots=settings.worker_slots,
        batch_size=64,
    )
    return app
