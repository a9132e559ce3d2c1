"""The shape of the model-endpoint fields a batch may set: an http(s) base URL or an endpoint name.

Only the shape is checked here. Whether a URL or a name is one the operator configured (and so
may carry a key) is the services' decision, made against their settings
(services/runtime/models/endpoints.py): contracts know no settings.
"""

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

MAX_BASE_URL = 500
SCHEMES = ("http", "https")
ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Visible ASCII only: no spaces, controls, NUL or look-alike characters (punycode an IDN host).
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def check_base_url(value: str) -> str:
    """`value` if it is an absolute http(s) URL with a host and nothing a parser could read two ways."""
    if len(value) > MAX_BASE_URL:
        raise ValueError(f"a base URL has at most {MAX_BASE_URL} characters")
    if not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError("a base URL is visible ASCII without spaces (punycode an international host name)")
    if "\\" in value:
        raise ValueError("a base URL has no backslash")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ValueError("a base URL's host is not well formed") from None
    if parts.scheme.lower() not in SCHEMES or not value[len(parts.scheme) :].startswith("://"):
        raise ValueError("a base URL starts with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("a base URL carries no user name or password (keys belong to configured endpoints)")
    if "%" in parts.netloc:
        raise ValueError("a base URL's host is not percent-encoded")
    if not parts.hostname:
        raise ValueError("a base URL needs a host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("a base URL's port is a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("a base URL's port is a number from 1 to 65535")
    if "?" in value or "#" in value:
        raise ValueError("a base URL has no query or fragment")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ValueError("a base URL's path has no '.' or '..' segments")
    return value


BaseUrl = Annotated[str, Field(max_length=MAX_BASE_URL), AfterValidator(check_base_url)]
EndpointName = Annotated[str, Field(pattern=ENDPOINT_NAME_PATTERN)]
