"""The chaos bench's accounting: what the clients were told was accepted, against what Kafka and the
training ledgers hold. Pure functions over ids, so they are tested on their own (tests/bench)."""

import json
from collections import Counter
from pathlib import Path


def delivery(accepted: list[str], on_topic: list[str]) -> dict:
    """Accepted ids (what clients got back) against the ids found on a topic.

    Returns ``{"accepted", "lost", "duplicated", "lost_ids", "duplicated_ids"}``: lost = accepted but not on
    the topic; duplicated = accepted ids on the topic more than once (ids of other clients are ignored).
    """
    counts = Counter(on_topic)
    lost = sorted(i for i in set(accepted) if counts[i] == 0)
    dup = sorted(i for i in set(accepted) if counts[i] > 1)
    return {"accepted": len(set(accepted)), "lost": len(lost), "duplicated": len(dup),
            "lost_ids": lost[:20], "duplicated_ids": dup[:20]}


def reward_double_counts(states: list[dict]) -> dict:
    """The reward service's ledger: each checkpoint's ``trained_feedback_ids`` (votes first trained into
    that version). A vote in two versions' lists was trained twice; a version whose ``votes_trained`` grew
    by other than its list's length counted votes it does not name.

    ``states``: every ``state.json`` of one lineage (any order).
    """
    seen = Counter(fid for s in states for fid in set(s.get("trained_feedback_ids", [])))
    twice = sorted(fid for fid, n in seen.items() if n > 1)
    within = sum(len(s.get("trained_feedback_ids", [])) - len(set(s.get("trained_feedback_ids", [])))
                 for s in states)
    by_version = {s["version"]: s for s in states}
    miscounted = [s["version"] for s in states if s.get("parent") in by_version
                  and s["votes_trained"] - by_version[s["parent"]]["votes_trained"]
                  != len(s.get("trained_feedback_ids", []))]
    return {"versions": len(states), "votes_in_ledger": len(seen), "double_counted": len(twice) + within,
            "double_counted_ids": twice[:20], "miscounted_versions": miscounted}


def learner_double_counts(states: list[dict]) -> dict:
    """The learner's ledger: ``recent_response_ids`` of its newest checkpoint (every response trained or
    skipped, newest ``dedup_window``) and each kept checkpoint's ``response_ids`` (its last batch). A
    response id there twice was trained twice."""
    if not states:
        return {"iterations": 0, "responses_in_ledger": 0, "double_counted": 0, "double_counted_ids": []}
    newest = max(states, key=lambda s: s["iteration"])
    recent = Counter(newest.get("recent_response_ids", []))
    batches = Counter(r for s in states for r in set(s.get("response_ids", [])))
    twice = sorted({r for r, n in recent.items() if n > 1} | {r for r, n in batches.items() if n > 1})
    return {"iterations": newest["iteration"], "responses_in_ledger": len(recent),
            "double_counted": len(twice), "double_counted_ids": twice[:20]}


def load_states(root: Path, pattern: str) -> list[dict]:
    """Every ``state.json`` under ``root`` matching ``pattern`` (e.g. ``"**/iter-*/state.json"``)."""
    return [json.loads(p.read_text()) for p in sorted(root.glob(pattern))]
