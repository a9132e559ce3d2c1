"""Where the deployment's nats-server config lives, and the passwords it reads from the environment.

`infra/nats/nats-server.conf` names one user per role and takes each password from
`$EVALBUS_NATS_<ROLE>_PASSWORD`; this module spells those names once, for compose and the tests.
"""

import re
import secrets
from pathlib import Path
from urllib.parse import quote

from contracts.services import NAMES

CONFIG_PATH = Path(__file__).resolve().parent / "nats" / "nats-server.conf"
# A node of the three-node cluster: includes nats-server.conf (from its own folder) and adds the routes.
CLUSTER_CONFIG_PATH = CONFIG_PATH.with_name("nats-cluster.conf")
ROUTE_USER = "route"
SERVER_NAME_ENV = "EVALBUS_NATS_SERVER_NAME"
ROUTE_PASSWORD_ENV = "EVALBUS_NATS_ROUTE_PASSWORD"
ROUTES_ENV = "EVALBUS_NATS_ROUTES"

# The users of nats-server.conf: the provisioner, the five services, the users' CLI, and the
# operator's CLI (which alone may re-drive work: `evalbus resume`).
ROLES: tuple[str, ...] = ("provisioner", *NAMES, "client", "operator")


def config_path() -> Path:
    return CONFIG_PATH


def render(dest: Path, *, store_dir: Path, listen: str | None = None, http: str | None = None) -> Path:
    """Write a copy of the config to `dest` with another JetStream store (and listen/monitor address).

    nats-server refuses `-sd` next to a config that sets `store_dir` ("Duplicate 'store_dir'"),
    so a test, or a host without /data, runs a rendered copy instead of passing flags.
    """
    text = _set(config_path().read_text(), "store_dir", f'"{store_dir}"')
    if listen is not None:
        text = _set(text, "listen", listen)
    if http is not None:
        text = _set(text, "http", http)
    dest.write_text(text)
    return dest


def render_cluster_node(dest_dir: Path, *, store_dir: Path, listen: str, http: str, cluster_listen: str) -> Path:
    """A cluster node's config in `dest_dir`: nats-cluster.conf with its route listener moved, beside
    the rendered nats-server.conf it includes (an include is read from the including file's folder)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    render(dest_dir / CONFIG_PATH.name, store_dir=store_dir, listen=listen, http=http)
    text = _set(CLUSTER_CONFIG_PATH.read_text(), "listen", cluster_listen, CLUSTER_CONFIG_PATH)
    dest = dest_dir / CLUSTER_CONFIG_PATH.name
    dest.write_text(text)
    return dest


def route_url(route_password: str, host_port: str) -> str:
    """`nats-route://route:<password>@host:port`: the password in clear, so it must be URL-safe."""
    if quote(route_password, safe="-_.~") != route_password:
        raise ValueError("the route password goes into route URLs: use URL-safe characters only")
    return f"nats-route://{ROUTE_USER}:{route_password}@{host_port}"


def cluster_env(server_name: str, route_password: str, routes: list[str]) -> dict[str, str]:
    """The variables nats-cluster.conf reads for one node; `routes` are every node's host:port."""
    urls = ", ".join(quoted(route_url(route_password, r)) for r in routes)
    return {SERVER_NAME_ENV: quoted(server_name), ROUTE_PASSWORD_ENV: quoted(route_password), ROUTES_ENV: f"[{urls}]"}


def _set(text: str, key: str, value: str, source: Path = CONFIG_PATH) -> str:
    """Replace the value of the first `key: ...` line, keeping its indentation."""
    new, n = re.subn(rf"^([ \t]*){key}: .*$", lambda m: f"{m.group(1)}{key}: {value}", text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{source} has no '{key}:' line")
    return new


def password_env(role: str) -> str:
    """`chat-runner` -> `EVALBUS_NATS_CHAT_RUNNER_PASSWORD` (config variables cannot hold '-')."""
    if role not in ROLES:
        raise ValueError(f"unknown NATS role {role!r}; expected one of {ROLES}")
    return f"EVALBUS_NATS_{role.upper().replace('-', '_')}_PASSWORD"


def new_passwords() -> dict[str, str]:
    """A fresh random password per role (URL-safe base64: may read as a number or hold '-')."""
    return {role: secrets.token_urlsafe(24) for role in ROLES}


def test_passwords() -> dict[str, str]:
    """A fresh random password per role, for a test server."""
    return new_passwords()


def quoted(password: str) -> str:
    """`password` as a quoted NATS config string, for the environment variable nats-server reads.

    nats-server parses a variable's value as a config value (`123456` is a number, `10G` a size,
    `yes` a boolean, `a,b` a syntax error) and does not expand a quoted variable in the file
    (`"$VAR"` is the literal text), so the quotes travel in the value. Inside double quotes only
    `\\` and `\"` need escaping; the control characters NATS cannot escape are refused.
    """
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in password) or "\x7f" in password:
        raise ValueError("a NATS password cannot hold control characters")
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


def server_env(passwords: dict[str, str]) -> dict[str, str]:
    """The environment variables nats-server needs for `passwords` (role -> password), quoted."""
    return {password_env(role): quoted(pw) for role, pw in passwords.items()}


# A helper, not a test: pytest would otherwise collect it in a test module that imports it by name.
test_passwords.__test__ = False  # type: ignore[attr-defined]
