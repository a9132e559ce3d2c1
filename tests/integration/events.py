"""Kept only for the tests not switched to tests/factories.py yet (test_bus, test_keepalive,
test_recorder_guards, unit/recorder/*, unit/runtime/test_worker_isolation): delete it with their
last import."""

from contracts.events import PromptScored
from tests.factories import BatchEvents


def scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)
