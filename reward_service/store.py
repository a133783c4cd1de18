"""The durable join of interactions and votes (SQLite), and the choice of what to train on next.

Interactions and votes arrive on two topics in any relative order; both are kept here, joined by response
id. The store may run *ahead* of the latest checkpoint (it is written as events are consumed, the
checkpoint only every so often), so everything in it is safe to replay:

- inserts are idempotent (keyed by response id and feedback id), so re-consumed events change nothing;
- each vote records the checkpoint version that first contains it (``trained_version``); on restart from
  version V, :meth:`JoinStore.rollback` forgets the marks above V, because those updates died with the
  process, and those votes are trained again — once — into the new lineage.

A vote that replaces an earlier one (``replaces_feedback_id``: the same user changed their mind) makes the
earlier one *superseded*: it is never trained unless it already was, and the replacing vote is trained
unless it only repeats an already-trained rating (nothing new to learn, and training it would count the
same opinion twice).
"""

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from proto.events_pb2 import Feedback, Interaction, Rating
from reward_service.losses import is_heldout

SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY,                 -- arrival order
    response_id TEXT NOT NULL UNIQUE,
    prompt_key TEXT NOT NULL,               -- the prompt messages as canonical JSON: pairs share it
    response TEXT NOT NULL,
    policy_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,                 -- arrival order
    feedback_id TEXT NOT NULL UNIQUE,
    response_id TEXT NOT NULL,
    up INTEGER NOT NULL,                    -- 1 thumbs up, 0 thumbs down
    heldout INTEGER NOT NULL,               -- in the held-out slice: never trained on
    replaces TEXT NOT NULL,                 -- feedback id this vote replaces, '' if none
    superseded INTEGER NOT NULL DEFAULT 0,  -- a later vote replaced this one
    dropped INTEGER NOT NULL DEFAULT 0,     -- its interaction never came (unknown response id)
    trained_version INTEGER,                -- first checkpoint version containing it; NULL: not trained
    arrived_at REAL NOT NULL                -- wall clock, s, for the join timeout
);
CREATE INDEX IF NOT EXISTS votes_response ON votes (response_id);
CREATE INDEX IF NOT EXISTS votes_replaces ON votes (replaces);
CREATE INDEX IF NOT EXISTS votes_trained ON votes (trained_version);
CREATE INDEX IF NOT EXISTS interactions_prompt ON interactions (prompt_key);
"""

# A vote can be trained when it is joined, outside the held-out slice, not superseded, not yet trained,
# and does not merely repeat the rating of an already-trained vote it replaces.
TRAINABLE = """
    v.trained_version IS NULL AND v.heldout = 0 AND v.superseded = 0 AND v.dropped = 0
    AND NOT EXISTS (SELECT 1 FROM votes o WHERE o.feedback_id = v.replaces
                    AND o.trained_version IS NOT NULL AND o.up = v.up)
"""


@dataclass(frozen=True)
class Example:
    """One joined vote: the conversation, the response and its rating."""

    feedback_id: str
    response_id: str
    messages: list[dict[str, str]]
    response: str
    up: bool


@dataclass(frozen=True)
class Pair:
    """Two responses to the same prompt, one liked and one disliked (for the Bradley–Terry loss)."""

    chosen: Example
    rejected: Example


class InvalidEvent(ValueError):
    """An event that parsed but lacks what the join needs (ids, messages, a rating)."""


def prompt_key(interaction: Interaction) -> str:
    """Canonical JSON of the prompt messages: equal exactly when two responses answer the same prompt."""
    return json.dumps([[m.role, m.content] for m in interaction.prompt_messages], ensure_ascii=False)


class JoinStore:
    """SQLite-backed join of interactions and votes. One instance per thread (SQLite connections are not
    shared across threads)."""

    def __init__(self, path: Path, heldout_fraction: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        # WAL + FULL sync: a committed write survives a killed process and a power cut.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.heldout_fraction = heldout_fraction

    def close(self) -> None:
        """Close the connection (uncommitted writes are rolled back)."""
        self.db.close()

    def commit(self) -> None:
        """Make the writes so far durable."""
        self.db.commit()

    def add_interaction(self, event: Interaction) -> bool:
        """Store an interaction; returns False when it was already there. Raises :class:`InvalidEvent`."""
        if not event.response_id or not event.prompt_messages:
            raise InvalidEvent("interaction without response_id or prompt_messages")
        cur = self.db.execute(
            "INSERT OR IGNORE INTO interactions (response_id, prompt_key, response, policy_version)"
            " VALUES (?,?,?,?)",
            (event.response_id, prompt_key(event), event.response_text, event.policy_version),
        )
        return cur.rowcount == 1

    def add_vote(self, event: Feedback) -> bool:
        """Store a vote (and supersede the one it replaces); returns False when already there.

        Raises :class:`InvalidEvent` for a vote without ids or without an up/down rating.
        """
        if not event.feedback_id or not event.response_id:
            raise InvalidEvent("feedback without feedback_id or response_id")
        if event.rating not in (Rating.RATING_UP, Rating.RATING_DOWN):
            raise InvalidEvent(f"feedback {event.feedback_id} has no up/down rating ({event.rating})")
        cur = self.db.execute(
            "INSERT OR IGNORE INTO votes (feedback_id, response_id, up, heldout, replaces, arrived_at,"
            " superseded) VALUES (?,?,?,?,?,?, EXISTS (SELECT 1 FROM votes WHERE replaces = ?))",
            (
                event.feedback_id,
                event.response_id,
                int(event.rating == Rating.RATING_UP),
                int(is_heldout(event.response_id, self.heldout_fraction)),
                event.replaces_feedback_id,
                time.time(),
                event.feedback_id,  # a replacement that overtook the vote it replaces
            ),
        )
        if cur.rowcount == 1 and event.replaces_feedback_id:
            self.db.execute(
                "UPDATE votes SET superseded = 1 WHERE feedback_id = ?", (event.replaces_feedback_id,)
            )
        return cur.rowcount == 1

    def _example(self, row) -> Example:
        feedback_id, response_id, key, response, up = row
        messages = [{"role": role, "content": content} for role, content in json.loads(key)]
        return Example(feedback_id, response_id, messages, response, bool(up))

    def trainable(self, limit: int) -> list[Example]:
        """Up to ``limit`` votes to train on next, oldest first."""
        rows = self.db.execute(
            "SELECT v.feedback_id, v.response_id, i.prompt_key, i.response, v.up FROM votes v"
            f" JOIN interactions i ON i.response_id = v.response_id WHERE {TRAINABLE} ORDER BY v.id LIMIT ?",
            (limit,),
        ).fetchall()
        return [self._example(r) for r in rows]

    def partner(self, example: Example) -> Pair | None:
        """A pair for ``example``: the latest earlier usable vote with the opposite rating on another
        response to the same prompt (None when the prompt has none). Each vote forms at most one pair, so
        no pair is ever trained twice."""
        row = self.db.execute(
            "SELECT v.feedback_id, v.response_id, i.prompt_key, i.response, v.up FROM votes v"
            " JOIN interactions i ON i.response_id = v.response_id"
            " WHERE i.prompt_key = (SELECT prompt_key FROM interactions WHERE response_id = ?)"
            " AND v.response_id != ? AND v.up != ? AND v.heldout = 0 AND v.superseded = 0 AND v.dropped = 0"
            " AND v.id < (SELECT id FROM votes WHERE feedback_id = ?) ORDER BY v.id DESC LIMIT 1",
            (example.response_id, example.response_id, int(example.up), example.feedback_id),
        ).fetchone()
        if row is None:
            return None
        other = self._example(row)
        return Pair(example, other) if example.up else Pair(other, example)

    def mark_trained(self, feedback_ids: list[str], version: int) -> None:
        """Record that ``feedback_ids`` are trained into checkpoint ``version`` (not yet saved)."""
        self.db.executemany(
            "UPDATE votes SET trained_version = ? WHERE feedback_id = ?", [(version, f) for f in feedback_ids]
        )

    def trained_in(self, version: int) -> list[str]:
        """Feedback ids first trained into ``version``, in arrival order: that version's ledger."""
        rows = self.db.execute(
            "SELECT feedback_id FROM votes WHERE trained_version = ? ORDER BY id", (version,)
        )
        return [r[0] for r in rows]

    def rollback(self, version: int) -> int:
        """Forget training marks above checkpoint ``version`` (lost with the process that made them).

        Returns how many votes become trainable again.
        """
        cur = self.db.execute("UPDATE votes SET trained_version = NULL WHERE trained_version > ?", (version,))
        self.db.commit()
        return cur.rowcount

    def heldout(self, limit: int) -> list[Example]:
        """The ``limit`` most recent usable held-out votes (joined, not superseded)."""
        rows = self.db.execute(
            "SELECT v.feedback_id, v.response_id, i.prompt_key, i.response, v.up FROM votes v"
            " JOIN interactions i ON i.response_id = v.response_id"
            " WHERE v.heldout = 1 AND v.superseded = 0 AND v.dropped = 0 ORDER BY v.id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [self._example(r) for r in rows]

    def pending(self) -> int:
        """Votes waiting for their interaction."""
        return self.db.execute(
            "SELECT COUNT(*) FROM votes v WHERE v.dropped = 0"
            " AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.response_id = v.response_id)"
        ).fetchone()[0]

    def drop_unjoined(self, timeout_s: float | None, max_pending: int) -> tuple[int, int]:
        """Give up on votes whose interaction did not come: those waiting longer than ``timeout_s`` (no
        timeout when None), then the oldest beyond ``max_pending``. Returns (expired, evicted) counts; both
        are unknown response ids.
        """
        unjoined = (
            "dropped = 0"
            " AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.response_id = votes.response_id)"
        )
        expired = 0
        if timeout_s is not None:
            expired = self.db.execute(
                f"UPDATE votes SET dropped = 1 WHERE {unjoined} AND arrived_at < ?",
                (time.time() - timeout_s,),
            ).rowcount
        evicted = self.db.execute(
            f"UPDATE votes SET dropped = 1 WHERE id IN (SELECT id FROM votes WHERE {unjoined}"
            " ORDER BY id DESC LIMIT -1 OFFSET ?)",
            (max_pending,),
        ).rowcount
        self.db.commit()
        return expired, evicted

    def prune_interactions(self, keep: int, version: int) -> int:
        """Delete the oldest interactions beyond ``keep``, except those with votes still to train.

        Call right after checkpoint ``version`` is saved: every vote trained at or below it is final.
        Later votes on a deleted interaction count as unknown response ids. Returns how many went.
        """
        cur = self.db.execute(
            "DELETE FROM interactions"
            " WHERE id IN (SELECT id FROM interactions ORDER BY id DESC LIMIT -1 OFFSET ?)"
            " AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.response_id = interactions.response_id"
            " AND v.heldout = 0 AND v.superseded = 0 AND v.dropped = 0"
            " AND (v.trained_version IS NULL OR v.trained_version > ?))",
            (keep, version),
        )
        self.db.commit()
        return cur.rowcount
