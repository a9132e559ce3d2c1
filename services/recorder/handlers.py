"""The recorder's handlers: events (screened, then written), dead letters, breaker events.

The events stream's messages are taken only after commit (acked by `handling` once the handler
returns); the flush loop, not these handlers, publishes progress and completion.
"""

from collections.abc import Sequence
from typing import Protocol

from contracts.base import Event
from contracts.ops import DeadLetter
from services.recorder.dead_letters import from_advisory
from services.recorder.parsing import Advisory, BreakerRow
from services.runtime.messaging.handling import Incoming, Refusal


class EventTracker(Protocol):
    """What the handlers need of the batch tracker (tracker.Tracker)."""

    async def screen(self, events: Sequence[Event | None]) -> list[Refusal | None]: ...

    async def write(self, events: Sequence[Event | None]) -> None: ...

    def touched(self, batch_ids: set[str]) -> None: ...


class Writes(Protocol):
    """The writes of the dead-letter and breaker handlers (repository.Repository)."""

    async def record_dead_letters(self, letters: list[DeadLetter]) -> set[str]: ...

    async def record_breaker_events(self, rows: Sequence[BreakerRow]) -> None: ...


class OriginalReader(Protocol):
    """The events stream's message at a sequence, None once it has aged out (streams.StreamOriginals)."""

    async def read(self, stream_seq: int) -> Incoming | None: ...


async def screen_events(events: list[Event | None], tracker: EventTracker) -> list[Refusal | None]:
    """Refuse prompt events for prompts their batch does not have; defer those of a batch not
    recorded yet."""
    return await tracker.screen(events)


async def on_events(events: list[Event | None], tracker: EventTracker) -> None:
    await tracker.write(events)


async def dead_letter_of(item: DeadLetter | Advisory, originals: OriginalReader) -> DeadLetter | None:
    """The letter to keep: a service's as it is, an advisory's built from the message it names
    (None when that has aged out of the stream: nothing left to keep). Raises when the original
    cannot be read now, so the message comes back."""
    if isinstance(item, DeadLetter):
        return item
    original = await originals.read(item.stream_seq)
    return None if original is None else from_advisory(item, original)


async def on_dead_letters(
    items: list[DeadLetter | Advisory], originals: OriginalReader, repository: Writes, tracker: EventTracker
) -> None:
    letters = [letter for item in items if (letter := await dead_letter_of(item, originals)) is not None]
    if letters:
        # A prompt that ran out of deliveries is now failed: its batch's progress goes out.
        tracker.touched(await repository.record_dead_letters(letters))


async def on_breaker_events(rows: list[BreakerRow], repository: Writes) -> None:
    await repository.record_breaker_events(rows)
