"""`python -m services.fake_model [--port 8089] [--latency-ms 20] ...`: every setting is also a flag."""

import argparse
import asyncio
from collections.abc import Sequence

from pydantic import ValidationError

from services.fake_model.server import serve
from services.fake_model.settings import FakeModelSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.fake_model",
        description="A deterministic fake LLM server speaking the OpenAI chat-completions API.",
    )
    for name, info in FakeModelSettings.model_fields.items():
        env = f"EVALBUS_FAKE_MODEL_{name.upper()}"
        help_text = f"{info.description} (env {env}, default {info.default})"
        flag = "--" + name.replace("_", "-")
        # Values stay strings here; the settings model validates them exactly as it does env values.
        if info.annotation is bool:
            parser.add_argument(
                flag, nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL", help=help_text
            )
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> FakeModelSettings:
    """Flags override `EVALBUS_FAKE_MODEL_*` environment variables, which override defaults."""
    parser = build_parser()
    overrides = vars(parser.parse_args(argv))
    try:
        return FakeModelSettings(**overrides)
    except ValidationError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(serve(parse_settings(argv)))


if __name__ == "__main__":
    main()
