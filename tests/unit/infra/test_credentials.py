"""The embedded stack's generated credentials."""

import os
import stat
from pathlib import Path

from infra import credentials
from infra.nats_config import ROLES


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_generated_owner_only_and_reused(tmp_path: Path) -> None:
    first = credentials.load_or_create(tmp_path)
    path = credentials.credentials_path(tmp_path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert set(first.nats) == set(ROLES) and len(set(first.nats.values())) == len(ROLES)
    assert len(first.postgres) >= 24
    assert credentials.load_or_create(tmp_path) == first  # a later start reuses them
    assert credentials.read(tmp_path) == first
    assert first.login("client") == ("client", first.nats["client"])


def test_credentials_that_others_can_read_are_tightened(tmp_path: Path) -> None:
    credentials.load_or_create(tmp_path)
    path = credentials.credentials_path(tmp_path)
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    credentials.load_or_create(tmp_path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_no_credentials_before_the_first_start(tmp_path: Path) -> None:
    assert credentials.read(tmp_path) is None
