"""Human-readable reasons for input that does not validate (used in rejections and dead letters)."""

from pydantic import ValidationError


def describe_error(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err["loc"]) or "body"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)
