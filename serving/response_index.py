"""Which responses this service generated, and each user's current vote on them (SQLite on local disk).

Feedback needs both: a vote for an unknown response id is refused (404), and a user's second vote on the
same response replaces the first, so the new Feedback event names the one it replaces. The index survives
restarts. With several serving replicas behind a load balancer, point ``path`` at storage they share or
route votes to the replica that answered (sticky sessions).
"""

import sqlite3
import threading
import time
from pathlib import Path


class ResponseIndex:
    """Thread-safe index of served response ids and current votes.

    Args:
        path: SQLite database file (created if missing).
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " response_id TEXT PRIMARY KEY, policy_version INTEGER NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS votes ("
            " response_id TEXT NOT NULL, user_id TEXT NOT NULL, feedback_id TEXT NOT NULL,"
            " PRIMARY KEY (response_id, user_id))"
        )
        self._lock = threading.Lock()

    def add_response(self, response_id: str, policy_version: int) -> None:
        """Record that this service generated ``response_id`` with ``policy_version``."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO responses VALUES (?, ?, ?)", (response_id, policy_version, time.time())
            )

    def policy_version_of(self, response_id: str) -> int | None:
        """The policy version that generated ``response_id``, or None when it is unknown here."""
        with self._lock:
            row = self._db.execute(
                "SELECT policy_version FROM responses WHERE response_id = ?", (response_id,)
            ).fetchone()
        return None if row is None else row[0]

    def current_vote(self, response_id: str, user_id: str) -> str | None:
        """The feedback id of the user's current vote on the response, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT feedback_id FROM votes WHERE response_id = ? AND user_id = ?", (response_id, user_id)
            ).fetchone()
        return None if row is None else row[0]

    def set_vote(self, response_id: str, user_id: str, feedback_id: str) -> None:
        """Make ``feedback_id`` the user's current vote on the response."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO votes VALUES (?, ?, ?)", (response_id, user_id, feedback_id)
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
