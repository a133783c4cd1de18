"""API keys: the file that maps them to user ids, a contract between the processes that write keys (serving's
``python -m serving.keys``, the main job's simulated users, the benchmarks) and serving, which reads it.

The file holds one key per line, ``<sha256 hex of the key> <user id>`` (``#`` starts a comment), so a copy
of it gives no one a usable key. A key is ``rlhf-`` and 43 URL-safe characters from :mod:`secrets`
(256 bits), so an unsalted hash is enough: guessing a key is no easier than guessing its hash.
"""

import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

from proto.checkpoint import write_atomic

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
KEY_PREFIX = "rlhf-"


def default_path(state_dir: Path) -> Path:
    """``<state_dir>/serving/api_keys``: the file serving reads unless ``RLHF_SERVING_API_KEYS_FILE`` names
    another."""
    return state_dir / "serving" / "api_keys"


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
    """The API keys of ``path``, re-read whenever the file changes (so a key added by
    ``python -m serving.keys add`` works at once, without a restart). A missing file means no keys.

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
            write_atomic(self.path, "".join(kept), mode=0o600)
        return removed
