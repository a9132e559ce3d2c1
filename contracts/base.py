"""The base models every contract builds on, so that each kind of model states its config once.

- `Wire`: what services read from each other. Frozen; unknown fields are ignored, so additive
  changes inside `v1` need no coordinated deploy.
- `Strict`: what a user writes (a suite's checks, a quality config, a query). Frozen; unknown
  fields are refused, so a typo fails when the input is read, not silently later.
- `Event`: the envelope of every event on a batch subject (`evalbus.v1.batch.<id>.<entity>.<verb>`).
"""

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import subjects
from contracts.bounds import Timestamp, utcnow
from contracts.ids import BATCH_ID_PATTERN, event_id

SCHEMA_VERSION = 1
EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{0,100}$"


class Wire(BaseModel):
    """A model read from the wire: frozen, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Strict(BaseModel):
    """A model a user writes: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Compact(Wire):
    """A model that many events carry (a batch's config): an event leaves out its fields that are
    at their defaults, and readers fill them in."""

    _defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._defaults = {
            name: field.get_default(call_default_factory=True)
            for name, field in cls.model_fields.items()
            if not field.is_required()
        }

    def defaulted_fields(self) -> set[str]:
        """The fields still at their defaults, which events leave out on the wire."""
        return {name for name, default in self._defaults.items() if getattr(self, name) == default}


class Event(Wire):
    """Common envelope. Subclasses name their subject's entity and verb."""

    entity: ClassVar[str]
    verb: ClassVar[str]

    event_id: str = Field(default="", pattern=EVENT_ID_PATTERN)
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    occurred_at: Timestamp = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    def id_keys(self) -> tuple[object, ...]:
        return (self.batch_id,)

    @model_validator(mode="after")
    def _default_event_id(self) -> Self:
        if not self.event_id:
            object.__setattr__(self, "event_id", event_id(f"{self.entity}.{self.verb}", *self.id_keys()))
        return self

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {value}; this build reads {SCHEMA_VERSION}")
        return value

    @property
    def subject(self) -> str:
        return subjects.batch_event(self.batch_id, self.entity, self.verb)

    def to_json(self) -> bytes:
        """The wire form. A carried config leaves out its fields at their defaults (typically
        ~0.7 of a queued prompt's 1.3 kB, parsed again by every reader); readers fill them in."""
        config = getattr(self, "config", None)
        if isinstance(config, Compact):
            return self.model_dump_json(exclude={"config": config.defaulted_fields()}).encode()
        return self.model_dump_json().encode()
