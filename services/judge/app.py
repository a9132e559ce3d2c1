"""Judge service: `faststream run --factory services.judge.app:create_app`."""

from faststream import FastStream
from nats.aio.msg import Msg

from contracts.events import PromptResponded
from contracts.topology import JUDGE_RESPONDED
from services.judge.logic import judge_prompt
from services.runtime.bus import jetstream
from services.runtime.cancels import CancelledBatches
from services.runtime.model_client import chat_client
from services.runtime.service import consume, new_service, run_in_background
from services.runtime.settings import get_settings
from services.runtime.worker import work_one

SERVICE = "judge"


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    client = chat_client(settings, broker, SERVICE)
    app.after_shutdown(client.aclose)
    cancelled = CancelledBatches()
    run_in_background(app, lambda: cancelled.watch(jetstream(broker)))
    default_base_url = settings.judge_base_url or settings.model_base_url

    async def work(evt: PromptResponded) -> object:
        return await judge_prompt(client, evt, default_base_url, cancelled)

    async def on_prompt_responded(raw: Msg) -> None:
        await work_one(jetstream(broker), SERVICE, raw, PromptResponded, work, binding.keepalive_s)

    binding = consume(
        app,
        broker,
        SERVICE,
        JUDGE_RESPONDED,
        on_message=on_prompt_responded,
        slots=settings.worker_slots,
        batch_size=64,
    )
    return app
