"""Generator service: `faststream run --factory services.generator.app:create_app`."""

from faststream import FastStream

from contracts.topology import GENERATOR_CANCEL, GENERATOR_START, KV_CANCELS, KV_STARTS
from services.generator.cancels import KvCancelRecords
from services.generator.claims import KvStartClaims
from services.generator.handlers import (
    SuiteAccess,
    is_transient,
    on_cancel_requested,
    on_start_requested,
    read_cancel,
    read_start_delivery,
)
from services.generator.suite_objects import JetStreamSuites
from services.runtime.messaging.handling import Unexpected
from services.runtime.messaging.service import Service
from services.runtime.settings import get_settings

SERVICE = "generator"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    # The buckets are looked up on first use (retried with the message if the broker is away).
    claims = KvStartClaims(lambda: service.js.key_value(KV_STARTS))
    service.provide(
        claims=claims,
        starts=claims,
        cancels=KvCancelRecords(lambda: service.js.key_value(KV_CANCELS)),
        suites=JetStreamSuites(lambda: service.js),
        access=SuiteAccess(dirs=tuple(settings.suite_dirs), max_upload_bytes=settings.suite_max_bytes),
    )
    # A fault that does not go away by itself would fail the same way again: dead-lettered at once.
    once = Unexpected.DEAD_LETTER
    service.consumer(GENERATOR_START, slots=4, parse=read_start_delivery, transient=is_transient, unexpected=once)(
        on_start_requested
    )
    service.consumer(GENERATOR_CANCEL, slots=2, parse=read_cancel, transient=is_transient, unexpected=once)(
        on_cancel_requested
    )
    return service.app
