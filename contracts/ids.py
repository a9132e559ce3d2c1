"""Deterministic identifiers.

Every id is derived from the batch id and a position, so a redelivered or re-published event
carries the same id: it doubles as the JetStream `Nats-Msg-Id` and as the database key.
"""

import re
import uuid

_NAMESPACE = uuid.UUID("6f1c2d7e-8a43-4c0b-9a55-0e5b7d2f4a10")
BATCH_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_BATCH_ID_RE = re.compile(BATCH_ID_PATTERN)


def is_valid_batch_id(batch_id: str) -> bool:
    """A batch id is one NATS subject token: letters, digits, '-' and '_' only."""
    return bool(_BATCH_ID_RE.fullmatch(batch_id))  # (`$` alone would accept a trailing newline)


def new_batch_id(stamp: str, entropy: str) -> str:
    """A readable, sortable batch id: ``b-<UTC stamp>-<entropy>``; the caller supplies both."""
    return f"b-{stamp}-{entropy}"


def prompt_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index:06d}"


def event_id(kind: str, *keys: object) -> str:
    """The id of the one event of `kind` about `keys` (uuid5, stable across processes)."""
    name = kind + ":" + ":".join(str(k) for k in keys)
    return str(uuid.uuid5(_NAMESPACE, name))


SESSION_TAG_MAX = 200  # the length of BatchConfig.session_id (bounds.MAX_NAME), which the tag fills


def session_tag(model: str, stamp: str, max_length: int = SESSION_TAG_MAX) -> str:
    """Default session tag: ``batch-<model>-<UTC timestamp>`` with the model made tag-safe and
    cut so that the whole tag fits `max_length` (the timestamp is kept: it tells runs apart)."""
    room = max_length - len("batch-") - len("-") - len(stamp)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-")[: max(room, 1)].rstrip("-") or "model"
    return f"batch-{safe}-{stamp}"[:max_length]
