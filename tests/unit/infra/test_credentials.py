"""The embedded stack's generated credentials."""

import json
import os
import stat
from pathlib import Path

import pytest

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


def test_an_operator_login_is_generated_beside_the_clients(tmp_path: Path) -> None:
    creds = credentials.load_or_create(tmp_path)
    assert creds.login(credentials.OPERATOR_ROLE) == ("operator", creds.nats["operator"])
    assert creds.nats["operator"] != creds.nats["client"]


def test_a_role_added_since_the_file_was_written_gets_a_password_and_the_rest_are_kept(tmp_path: Path) -> None:
    first = credentials.load_or_create(tmp_path)
    path = credentials.credentials_path(tmp_path)
    raw = json.loads(path.read_text())
    del raw["nats"]["operator"]  # as a stack started before the operator role wrote it
    path.write_text(json.dumps(raw))
    older = credentials.read(tmp_path)
    assert older is not None and "operator" not in older.nats
    with pytest.raises(LookupError, match="restart the stack"):
        older.login("operator")
    again = credentials.load_or_create(tmp_path)
    assert set(again.nats) == set(ROLES) and again.postgres == first.postgres
    assert {r: p for r, p in again.nats.items() if r != "operator"} == {
        r: p for r, p in first.nats.items() if r != "operator"
    }
    assert mode(path) == 0o600 and credentials.read(tmp_path) == again
