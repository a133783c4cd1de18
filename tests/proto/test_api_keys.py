"""The API keys file: hashes only, re-read on change, revocation in place."""

import os

import pytest

from proto.api_keys import KeyFile, digest, parse


def test_a_key_is_stored_hashed_and_found_at_once(tmp_path):
    keys = KeyFile(tmp_path / "serving" / "api_keys")
    assert keys.user_of("rlhf-nothing") is None  # no file: no keys
    key = keys.add("alice")
    assert key.startswith("rlhf-") and key not in keys.path.read_text()
    assert keys.path.read_text() == f"{digest(key)} alice\n"
    assert keys.user_of(key) == "alice" and keys.users() == ["alice"]
    assert os.stat(keys.path).st_mode & 0o777 == 0o600


def test_revoke_removes_every_key_of_a_user_and_keeps_the_rest(tmp_path):
    keys = KeyFile(tmp_path / "api_keys")
    first, second, bob = keys.add("alice"), keys.add("alice"), keys.add("bob")
    assert keys.revoke("alice") == 2 and keys.revoke("carol") == 0
    assert (keys.user_of(first), keys.user_of(second), keys.user_of(bob)) == (None, None, "bob")
    assert os.stat(keys.path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("line", ["abc alice", f"{'0' * 64} al ice", f"{'0' * 64} -alice"])
def test_a_malformed_line_is_named(line):
    with pytest.raises(ValueError, match="keys line 2"):
        parse(f"# comment\n{line}\n", "keys")


def test_an_invalid_user_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid user id"):
        KeyFile(tmp_path / "api_keys").add("a b")
