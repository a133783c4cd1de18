"""API keys: the file that maps them to user ids, and ``python -m serving.keys add USER`` to make one.

The file holds one key per line, ``<sha256 hex of the key> <user id>`` (``#`` starts a comment), so a copy
of it gives no one a usable key. A key is ``rlhf-`` and 43 URL-safe characters from :mod:`secrets`
(256 bits), so an unsalted hash is enough: guessing a key is no easier than guessing its hash.

    python -m serving.keys add alice            # prints alice's new key once, appends its hash
    python -m serving.keys revoke alice         # removes every key of alice
    python -m serving.keys list                 # user ids that have keys
"""

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
from pathlib import Path

from serving.settings import default_state_dir

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
KEY_PREFIX = "rlhf-"


def digest(key: str) -> str:
    """The sha256 hex digest of ``key`` as stored in the file."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse(text: str, source: str = "keys file") -> list[tuple[str, str]]:
    """``(digest, user id)`` of each key line in ``text``. Raises ``ValueError`` naming a malformed line."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]) or not USER_ID.match(parts[1]):
            raise ValueError(f"{source} line {number}: expected '<sha256 hex> <user id>'")
        entries.append((parts[0], parts[1]))
    return entries


class KeyFile:
    """The API keys of ``path``, re-read whenever the file changes (so a key added by ``serving.keys add``
    works at once, without a restart). A missing file means no keys.

    Args:
        path: the keys file.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: list[tuple[str, str]] = []

    def _current(self) -> list[tuple[str, str]]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._entries = parse(self.path.read_text(), str(self.path)) if stamp else []
                self._stamp = stamp
            return self._entries

    def user_of(self, key: str) -> str | None:
        """The user id of ``key``, or None when the key is unknown.

        Every stored digest is compared in constant time (``hmac.compare_digest``), none skipped.
        Raises ``ValueError`` when the file is malformed.
        """
        wanted = digest(key)
        user = None
        for stored, user_id in self._current():
            if hmac.compare_digest(stored, wanted) and user is None:
                user = user_id
        return user

    def users(self) -> list[str]:
        """User ids with at least one key, in file order."""
        return list(dict.fromkeys(user for _, user in self._current()))

    def add(self, user_id: str) -> str:
        """Make a new key for ``user_id``, append its digest (file mode 0600) and return the key.

        Raises ``ValueError`` for a user id that is not 1-128 of ``A-Z a-z 0-9 . _ @ -``.
        """
        if not USER_ID.match(user_id):
            raise ValueError(f"invalid user id {user_id!r}: use 1-128 letters, digits and . _ @ - "
                             "(starting with a letter or digit)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{digest(key)} {user_id}\n")
        return key

    def revoke(self, user_id: str) -> int:
        """Remove every key of ``user_id`` (the file is replaced atomically); returns how many there were."""
        if not self.path.exists():
            return 0
        kept, removed = [], 0
        for line in self.path.read_text().splitlines(keepends=True):
            fields = line.split("#", 1)[0].split()
            if len(fields) == 2 and fields[1] == user_id:
                removed += 1
            else:
                kept.append(line)
        if removed:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("".join(kept))
            os.replace(tmp, self.path)
        return removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.keys", description="Manage serving's API keys.")
    parser.add_argument("--file", type=Path, help="keys file (default RLHF_SERVING_API_KEYS_FILE, "
                                                  "else <state>/serving/api_keys)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a key for a user id and print it (it is shown only this once)")
    add.add_argument("user_id")
    revoke = sub.add_parser("revoke", help="remove every key of a user id")
    revoke.add_argument("user_id")
    sub.add_parser("list", help="print the user ids that have keys")
    args = parser.parse_args(argv)
    keys = KeyFile(args.file or default_file())
    if args.command == "add":
        try:
            print(keys.add(args.user_id))
        except ValueError as exc:
            sys.exit(str(exc))
        print(f"key for {args.user_id} added to {keys.path}; send it as 'Authorization: Bearer <key>'",
              file=sys.stderr)
    elif args.command == "revoke":
        print(f"removed {keys.revoke(args.user_id)} key(s) of {args.user_id} from {keys.path}", file=sys.stderr)
    else:
        print("\n".join(keys.users()))


def default_file() -> Path:
    """The keys file serving reads with this environment (see ``Settings.api_keys_file``)."""
    if path := os.environ.get("RLHF_SERVING_API_KEYS_FILE"):
        return Path(path)
    state = os.environ.get("RLHF_SERVING_STATE_DIR")
    return (Path(state) if state else default_state_dir()) / "serving" / "api_keys"


if __name__ == "__main__":
    main()
