"""Named limit presets for model calls. `default` follows batch-scoring practice for slow hosted
APIs: 3 calls in flight, 2 retries starting at 5 s, a 120 s timeout (breaker threshold 5 is a
service setting)."""

from typing import Literal

from contracts.base import Wire

PresetName = Literal["conservative", "default", "aggressive"]


class Limits(Wire):
    concurrency: int
    max_retries: int
    retry_base_s: float
    timeout_s: float


PRESETS: dict[str, Limits] = {
    "conservative": Limits(concurrency=1, max_retries=3, retry_base_s=10.0, timeout_s=180.0),
    "default": Limits(concurrency=3, max_retries=2, retry_base_s=5.0, timeout_s=120.0),
    "aggressive": Limits(concurrency=32, max_retries=2, retry_base_s=1.0, timeout_s=60.0),
}
