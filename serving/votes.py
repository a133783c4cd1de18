"""Each user's current vote per response on this replica (SQLite on local disk), so a changed vote names
the one it replaces (``replaces_feedback_id``), which the reward service uses to train only the latest.

Whether a vote is allowed needs no state: the feedback token proves it (serving/signing.py). This index only
links a user's votes on one response cast through the same replica; a changed vote that reaches another
replica is logged without the link, and the reward service's held-out set and loop/report.py still count
one vote per user and response (the latest). Route a user to one replica to keep the link everywhere.
"""

import sqlite3
import threading
from pathlib import Path


class CurrentVotes:
    """Thread-safe map of (response id, user id) to the feedback id of the user's current vote.

    Args:
        path: SQLite database file (created if missing; survives restarts).
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS votes ("
            " response_id TEXT NOT NULL, user_id TEXT NOT NULL, feedback_id TEXT NOT NULL,"
            " PRIMARY KEY (response_id, user_id))"
        )
        self._lock = threading.Lock()

    def current(self, response_id: str, user_id: str) -> str | None:
        """The feedback id of the user's current vote on the response, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT feedback_id FROM votes WHERE response_id = ? AND user_id = ?", (response_id, user_id)
            ).fetchone()
        return None if row is None else row[0]

    def set(self, response_id: str, user_id: str, feedback_id: str) -> None:
        """Make ``feedback_id`` the user's current vote on the response."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO votes VALUES (?, ?, ?)", (response_id, user_id, feedback_id)
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
