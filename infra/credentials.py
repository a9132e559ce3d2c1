"""The embedded stack's secrets: a NATS password per role and the PostgreSQL password.

Generated at the first start, kept in `<data dir>/secrets/credentials.json` (directory 0700, file
0600: only the owner reads them) and reused by later starts, so the stack's state (NATS users,
the database's password) keeps matching. The CLI reads the `client` login from here when it talks
to the embedded stack, and the `operator` login for the commands that re-drive work (`evalbus
resume`). A role added since the file was written gets its password at the next start.
"""

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from infra.nats_config import ROLES, new_passwords

SECRETS_DIR = "secrets"
CREDENTIALS_FILE = "credentials.json"
CLIENT_ROLE = "client"
OPERATOR_ROLE = "operator"


@dataclass(frozen=True)
class Credentials:
    nats: dict[str, str]  # role -> password, every role of infra/nats/nats-server.conf
    postgres: str

    def login(self, role: str) -> tuple[str, str]:
        if role not in self.nats:
            raise LookupError(f"no NATS password for {role!r} yet: restart the stack (`evalbus down`, `evalbus up`)")
        return role, self.nats[role]


def credentials_path(data_dir: Path) -> Path:
    return data_dir / SECRETS_DIR / CREDENTIALS_FILE


def load_or_create(data_dir: Path) -> Credentials:
    """The stack's credentials, created (owner-only) if this data directory has none yet."""
    path = credentials_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)  # mkdir's mode is masked by the umask, and an old dir may be wider
    found = read(data_dir)
    if found is not None and set(found.nats) >= set(ROLES):
        return found
    if found is not None:  # written before a role existed: the others are kept, the new ones made
        creds = Credentials(nats={**new_passwords(), **found.nats}, postgres=found.postgres)
    else:
        creds = Credentials(nats=new_passwords(), postgres=secrets.token_urlsafe(24))
    _write(path, creds)
    return creds


def _write(path: Path, creds: Credentials) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as fh:
        json.dump({"nats": creds.nats, "postgres": creds.postgres}, fh, indent=2)
    os.replace(tmp, path)


def read(data_dir: Path) -> Credentials | None:
    """The stored credentials, or None if there are none; a file others could read is tightened."""
    path = credentials_path(data_dir)
    if not path.exists():
        return None
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)
    raw = json.loads(path.read_text())
    nats = {role: str(raw["nats"][role]) for role in ROLES if role in raw["nats"]}
    return Credentials(nats=nats, postgres=str(raw["postgres"]))
