"""Estimated cost of a call: the batch's own rates, else a small table of list prices (USD per 1M tokens)."""

from contracts.inputs import BatchConfig

# (input, output) per million tokens; a batch can always override with its own rates.
LIST_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    # The bundled fake model is priced like a small hosted model so demo costs look realistic.
    "evalbus-fake": (0.15, 0.60),
    "evalbus-fake-judge": (0.15, 0.60),
}


def rates_for(model: str, cfg: BatchConfig) -> tuple[float, float]:
    listed = LIST_PRICES.get(model, (0.0, 0.0))
    rate_in = cfg.input_cost_per_mtok if cfg.input_cost_per_mtok is not None else listed[0]
    rate_out = cfg.output_cost_per_mtok if cfg.output_cost_per_mtok is not None else listed[1]
    return rate_in, rate_out


def cost_usd(model: str, cfg: BatchConfig, tokens_in: int, tokens_out: int) -> float:
    rate_in, rate_out = rates_for(model, cfg)
    return (tokens_in * rate_in + tokens_out * rate_out) / 1_000_000
