"""The durable join of interactions and votes (SQLite), and the choice of what to train on next.

Interactions and votes arrive on two topics in any relative order; both are kept here, joined by response
id. The store may run *ahead* of the latest checkpoint (it is written as events are consumed, the
checkpoint only every so often), so everything in it is safe to replay:

- inserts are idempotent (keyed by response id and feedback id), so re-consumed events change nothing;
- each vote records the checkpoint version that first contains it (``trained_version``); on restart from
  version V, :meth:`JoinStore.rollback` forgets the marks above V, because those updates died with the
  process, and those votes are trained again — once — into the new lineage.

A user's later vote on the same response (the same user changed their mind) makes the earlier one
*superseded*: it is never trained unless it already was, and the later vote is trained unless it only
repeats an already-trained rating (nothing new to learn, and training it would count the same opinion
twice). "Later" is by the time the user voted (``Feedback.created_at``), so it holds whatever order the
votes arrive in and whichever serving replica took them. Votes without a user id may be anyone's: none
supersedes another.

Each vote is judged once, when it arrives, against the per-identity cap (:mod:`reward_service.identity`):
a vote *over the cap* is kept (``over_cap`` = 1) but never trained, paired or evaluated.

The held-out slice is chosen by *prompt* (``losses.is_heldout`` of the canonical prompt key), so it is a
property of the interaction; a vote is held out when the response it rates is. The evaluation set
(:meth:`JoinStore.heldout`) counts at most one vote per (user, response) and at most a few votes per
response, so a response with hundreds of votes cannot decide the held-out score, and at most a capped share
per identity (:func:`reward_service.identity.cap_per_identity`).

Files written by an earlier version of this module are migrated in place when opened (:data:`MIGRATIONS`).
"""

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from proto.events_pb2 import Feedback, Interaction, Rating
from reward_service import identity
from reward_service.losses import is_heldout

SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY,                 -- arrival order
    response_id TEXT NOT NULL UNIQUE,
    prompt_key TEXT NOT NULL,               -- the prompt messages as canonical JSON: pairs share it
    response TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    heldout INTEGER NOT NULL DEFAULT 0,     -- its prompt is in the held-out slice: never trained on
    finish_reason TEXT NOT NULL DEFAULT 'stop'  -- "stop", "length" (cut off by the token budget), ...
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,                 -- arrival order
    feedback_id TEXT NOT NULL UNIQUE,
    response_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',       -- who voted ('' unknown): one vote per user and response counts
    up INTEGER NOT NULL,                    -- 1 thumbs up, 0 thumbs down
    superseded INTEGER NOT NULL DEFAULT 0,  -- a later vote replaced this one
    dropped INTEGER NOT NULL DEFAULT 0,     -- its interaction never came (unknown response id)
    trained_version INTEGER,                -- first checkpoint version containing it; NULL: not trained
    arrived_at REAL NOT NULL,               -- wall clock when stored here, s (join timeout)
    voted_at REAL NOT NULL DEFAULT 0,       -- when the user voted (Feedback.created_at), s; 0 unknown
    over_cap INTEGER NOT NULL DEFAULT 0     -- its identity was over the per-identity cap: never used
);
CREATE INDEX IF NOT EXISTS votes_response ON votes (response_id);
CREATE INDEX IF NOT EXISTS votes_trained ON votes (trained_version);
CREATE INDEX IF NOT EXISTS interactions_prompt ON interactions (prompt_key);
"""

# (table, column, definition) added since the first schema; a file that lacks one gets it on open.
MIGRATIONS = (
    ("interactions", "heldout", "INTEGER NOT NULL DEFAULT 0"),  # then filled from the prompt key
    ("interactions", "finish_reason", "TEXT NOT NULL DEFAULT 'stop'"),  # earlier rows: as encoded then
    ("votes", "user_id", "TEXT NOT NULL DEFAULT ''"),
    ("votes", "voted_at", "REAL NOT NULL DEFAULT 0"),
    ("votes", "over_cap", "INTEGER NOT NULL DEFAULT 0"),  # earlier votes: all admitted
)

# Vote ``o`` is an earlier vote of ``v``'s user on the same response (votes without a user id are not linked
# this way: they may be anyone's).
_EARLIER_SAME_USER = (
    "o.response_id = v.response_id AND o.user_id = v.user_id AND v.user_id != '' AND o.voted_at < v.voted_at"
)

# A vote can be trained when it is joined (``i`` is its interaction), outside the held-out slice, not
# superseded, within its identity's cap, not yet trained, and does not merely repeat the rating of an
# already-trained earlier vote of the same user.
TRAINABLE = """
    v.trained_version IS NULL AND i.heldout = 0 AND v.superseded = 0 AND v.dropped = 0 AND v.over_cap = 0
    AND NOT EXISTS (SELECT 1 FROM votes o
                    WHERE """ + _EARLIER_SAME_USER + """
                    AND o.trained_version IS NOT NULL AND o.up = v.up)
"""
EXAMPLE_COLUMNS = "v.feedback_id, v.response_id, i.prompt_key, i.response, v.up, i.finish_reason, v.user_id"


@dataclass(frozen=True)
class Example:
    """One joined vote: the conversation, the response and its rating."""

    feedback_id: str
    response_id: str
    messages: list[dict[str, str]]
    response: str
    up: bool
    finish_reason: str = "stop"  # "length": the response was cut off (encoded without its end of turn)
    user_id: str = ""  # who voted ('' unknown)


@dataclass(frozen=True)
class Pair:
    """Two responses to the same prompt, one liked and one disliked (for the Bradley–Terry loss)."""

    chosen: Example
    rejected: Example


# SQLite integers are signed 64-bit; a uint64 beyond that would fail the insert on every redelivery.
MAX_POLICY_VERSION = 2**63 - 1


class InvalidEvent(ValueError):
    """An event that parsed but lacks what the join needs (ids, messages, a rating)."""


@dataclass(frozen=True)
class Backlog:
    """Votes ready to train and not trained yet: how many, and when the oldest was cast (wall clock, s)."""

    votes: int
    oldest_at: float | None

    def lag(self, now: float) -> float:
        """Age of the oldest waiting vote at ``now`` (wall clock, s); 0 when none waits."""
        return 0.0 if self.oldest_at is None else max(0.0, now - self.oldest_at)


def prompt_key(interaction: Interaction) -> str:
    """Canonical JSON of the prompt messages: equal exactly when two responses answer the same prompt."""
    return json.dumps([[m.role, m.content] for m in interaction.prompt_messages], ensure_ascii=False)


def _seconds(timestamp) -> float:
    """A protobuf Timestamp as Unix seconds (0 when unset)."""
    return timestamp.seconds + timestamp.nanos / 1e9


class JoinStore:
    """SQLite-backed join of interactions and votes. One instance per thread (SQLite connections are not
    shared across threads)."""

    def __init__(
        self,
        path: Path,
        heldout_fraction: float,
        identity_share_factor: float = identity.DEFAULT_SHARE_FACTOR,
        identity_window_votes: int = identity.DEFAULT_WINDOW_VOTES,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        # WAL + FULL sync: a committed write survives a killed process and a power cut.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.heldout_fraction = heldout_fraction
        self.identity_share_factor = identity_share_factor
        self.identity_window_votes = identity_window_votes
        self._migrate()

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def _migrate(self) -> None:
        """Bring a file written by an earlier schema up to date, in one transaction.

        Adds the columns of :data:`MIGRATIONS`; fills ``interactions.heldout`` from the prompt (the split used
        to be by response id, stored in ``votes.heldout``, which is dropped). Votes trained under the old
        split on prompts that are now held out are kept out of the evaluation set (see :meth:`heldout`).
        Drops ``votes.replaces``, the link of a field serving no longer sends.
        """
        self.db.execute("BEGIN")  # DDL too: a crash half-way leaves the file as it was
        added = []
        for table, column, definition in MIGRATIONS:
            if column not in self._columns(table):
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                added.append((table, column))
        if ("interactions", "heldout") in added:
            keys = [r[0] for r in self.db.execute("SELECT DISTINCT prompt_key FROM interactions")]
            self.db.executemany(
                "UPDATE interactions SET heldout = 1 WHERE prompt_key = ?",
                [(k,) for k in keys if is_heldout(k, self.heldout_fraction)],
            )
        if "heldout" in self._columns("votes"):
            self.db.execute("ALTER TABLE votes DROP COLUMN heldout")
        if "replaces" in self._columns("votes"):
            self.db.execute("DROP INDEX IF EXISTS votes_replaces")
            self.db.execute("ALTER TABLE votes DROP COLUMN replaces")
        # An index of the cap's first version (its window was the admitted votes only); unused since.
        self.db.execute("DROP INDEX IF EXISTS votes_admitted")
        self.db.commit()

    def close(self) -> None:
        """Close the connection (uncommitted writes are rolled back)."""
        self.db.close()

    def commit(self) -> None:
        """Make the writes so far durable."""
        self.db.commit()

    def add_interaction(self, event: Interaction) -> bool:
        """Store an interaction; returns False when it was already there.

        Raises :class:`InvalidEvent` for one without ids or messages, or with a policy version SQLite cannot
        hold (a crafted record that would otherwise stop the worker on every redelivery).
        """
        if not event.response_id or not event.prompt_messages:
            raise InvalidEvent("interaction without response_id or prompt_messages")
        if event.policy_version > MAX_POLICY_VERSION:
            raise InvalidEvent(f"interaction {event.response_id} has policy_version {event.policy_version}, "
                               f"beyond {MAX_POLICY_VERSION}")
        key = prompt_key(event)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO interactions (response_id, prompt_key, response, policy_version,"
            " heldout, finish_reason) VALUES (?,?,?,?,?,?)",
            (
                event.response_id,
                key,
                event.response_text,
                event.policy_version,
                int(is_heldout(key, self.heldout_fraction)),
                event.finish_reason or "stop",
            ),
        )
        return cur.rowcount == 1

    def add_vote(self, event: Feedback) -> bool:
        """Store a vote (and supersede the user's earlier ones on the response); returns False when already
        there.

        Whether it is over its identity's cap is decided now, against the latest votes received
        (:func:`reward_service.identity.admits`), and kept with it.

        Raises :class:`InvalidEvent` for a vote without ids or without an up/down rating.
        """
        if not event.feedback_id or not event.response_id:
            raise InvalidEvent("feedback without feedback_id or response_id")
        if event.rating not in (Rating.RATING_UP, Rating.RATING_DOWN):
            raise InvalidEvent(f"feedback {event.feedback_id} has no up/down rating ({event.rating})")
        window = [
            row[0]
            for row in self.db.execute(
                "SELECT user_id FROM votes ORDER BY id DESC LIMIT ?",
                (self.identity_window_votes - 1,),  # the new vote completes the window
            )
        ]
        over_cap = not identity.admits(window, event.user_id, self.identity_share_factor)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO votes (feedback_id, response_id, user_id, up, arrived_at, voted_at,"
            " over_cap, superseded)"
            " VALUES (?,?,?,?,?,?,?, EXISTS (SELECT 1 FROM votes"
            "  WHERE response_id = ? AND user_id = ? AND user_id != '' AND voted_at > ?))",
            (
                event.feedback_id,
                event.response_id,
                event.user_id,
                int(event.rating == Rating.RATING_UP),
                time.time(),
                _seconds(event.created_at),
                int(over_cap),
                event.response_id,  # a later vote of the same user, from any replica, arrived first
                event.user_id,
                _seconds(event.created_at),
            ),
        )
        if cur.rowcount == 1:
            self.db.execute(
                "UPDATE votes SET superseded = 1"
                " WHERE response_id = ? AND user_id = ? AND user_id != '' AND voted_at < ?",
                (event.response_id, event.user_id, _seconds(event.created_at)),
            )
        return cur.rowcount == 1

    def _example(self, row) -> Example:
        feedback_id, response_id, key, response, up, finish_reason, user_id = row
        messages = [{"role": role, "content": content} for role, content in json.loads(key)]
        return Example(feedback_id, response_id, messages, response, bool(up), finish_reason, user_id)

    def trainable(self, limit: int) -> list[Example]:
        """Up to ``limit`` votes to train on next, oldest first."""
        rows = self.db.execute(
            f"SELECT {EXAMPLE_COLUMNS} FROM votes v"
            f" JOIN interactions i ON i.response_id = v.response_id WHERE {TRAINABLE} ORDER BY v.id LIMIT ?",
            (limit,),
        ).fetchall()
        return [self._example(r) for r in rows]

    def backlog(self) -> Backlog:
        """The votes :meth:`trainable` would return, all of them: their count, and when the oldest was cast
        (``Feedback.created_at``; when the event lacks it, when it was stored here)."""
        count, oldest = self.db.execute(
            "SELECT COUNT(*), MIN(CASE WHEN v.voted_at > 0 THEN v.voted_at ELSE v.arrived_at END)"
            f" FROM votes v JOIN interactions i ON i.response_id = v.response_id WHERE {TRAINABLE}"
        ).fetchone()
        return Backlog(count, oldest)

    def partner(self, example: Example) -> Pair | None:
        """A pair for ``example``: the latest earlier usable vote with the opposite rating on another
        response to the same prompt (None when the prompt has none). Each vote forms at most one pair, so
        no pair is ever trained twice."""
        row = self.db.execute(
            f"SELECT {EXAMPLE_COLUMNS} FROM votes v"
            " JOIN interactions i ON i.response_id = v.response_id"
            " WHERE i.prompt_key = (SELECT prompt_key FROM interactions WHERE response_id = ?)"
            " AND v.response_id != ? AND v.up != ? AND i.heldout = 0 AND v.superseded = 0 AND v.dropped = 0"
            " AND v.over_cap = 0"
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

    def heldout(self, limit: int, per_response: int) -> list[Example]:
        """The evaluation set: the ``limit`` most recent held-out votes, counting per response only the
        latest vote of each user and, of those, the ``per_response`` latest, and per identity at most its
        capped share of the set (:func:`reward_service.identity.cap_per_identity`).

        Usable votes are joined, not superseded, not dropped, within their identity's cap, and on a prompt
        that was never trained on (a file migrated from the response-level split may hold trained votes on
        prompts now held out). Votes without a user id count as one user. Newest first.
        """
        candidates = self.db.execute(
            """
            WITH usable AS (
                SELECT v.id, v.user_id, v.response_id FROM votes v
                JOIN interactions i ON i.response_id = v.response_id
                WHERE i.heldout = 1 AND v.superseded = 0 AND v.dropped = 0 AND v.over_cap = 0
                AND NOT EXISTS (SELECT 1 FROM interactions j JOIN votes t ON t.response_id = j.response_id
                                WHERE j.prompt_key = i.prompt_key AND t.trained_version IS NOT NULL)
            ), latest_per_user AS (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY response_id, user_id ORDER BY id DESC)
                    AS nth_of_user
                FROM usable
            ), capped AS (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY response_id ORDER BY id DESC) AS nth_of_response
                FROM latest_per_user WHERE nth_of_user = 1
            )
            SELECT id, user_id FROM capped WHERE nth_of_response <= ? ORDER BY id DESC
            """,
            (per_response,),
        ).fetchall()
        kept = identity.cap_per_identity([u for _, u in candidates], limit, self.identity_share_factor)
        ids = [candidates[i][0] for i in kept]
        rows = self.db.execute(
            f"SELECT {EXAMPLE_COLUMNS} FROM votes v JOIN interactions i ON i.response_id = v.response_id"
            f" WHERE v.id IN ({','.join('?' * len(ids))}) ORDER BY v.id DESC",
            ids,
        ).fetchall()
        return [self._example(r) for r in rows]

    def identities(self, trained: bool) -> identity.Distribution:
        """Votes per identity among the latest ``identity_window_votes`` votes received (``trained``
        False, over the cap or not) or trained (True)."""
        where = "WHERE trained_version IS NOT NULL" if trained else ""
        rows = self.db.execute(
            f"SELECT user_id FROM votes {where} ORDER BY id DESC LIMIT ?", (self.identity_window_votes,)
        )
        return identity.Distribution.of([r[0] for r in rows])

    def over_cap(self) -> int:
        """Votes over their identity's cap among the latest ``identity_window_votes`` received."""
        return self.db.execute(
            "SELECT COALESCE(SUM(over_cap), 0) FROM (SELECT over_cap FROM votes ORDER BY id DESC LIMIT ?)",
            (self.identity_window_votes,),
        ).fetchone()[0]

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
            " AND interactions.heldout = 0 AND v.superseded = 0 AND v.dropped = 0 AND v.over_cap = 0"
            " AND (v.trained_version IS NULL OR v.trained_version > ?))",
            (keep, version),
        )
        self.db.commit()
        return cur.rowcount
