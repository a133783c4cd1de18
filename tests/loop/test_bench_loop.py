"""bench/loop's arithmetic, by hand: the verdict against v0, CPU per stage per trained example, metric parsing,
and CPU sampling of a process tree."""

import subprocess
import sys
import time

import pytest

from bench.loop.run import MAIN_JOB, TreeCPU, by_label, stage_breakdown, trained_votes, verdict


def row(version: int, up: int, down: int) -> dict:
    return {"version": version, "up": up, "down": down}


def test_verdict_compares_the_last_promoted_version_with_votes_to_v0():
    versions = [row(0, 40, 60), row(1, 50, 50), row(2, 60, 40), row(3, 0, 0)]  # v3: promoted, no votes yet
    v = verdict(versions, promoted=[1, 2, 3])
    assert v["version"] == 2
    assert v["diff_points"] == pytest.approx(20.0)
    # Wilson: 40/100 → [30.94%, 49.80%], 60/100 → [50.20%, 69.06%]: just apart.
    assert v["overlap"] is False and "do not overlap" in v["text"]


def test_verdict_calls_overlapping_intervals_inside_noise():
    v = verdict([row(0, 45, 55), row(1, 50, 50)], promoted=[1])
    assert v["diff_points"] == pytest.approx(5.0) and v["overlap"] is True and "inside noise" in v["text"]


def test_verdict_without_a_promoted_version_or_control():
    assert "nothing to compare" in verdict([row(0, 5, 5)], promoted=[])["text"]
    assert "no votes on v0" in verdict([row(0, 0, 0), row(1, 3, 1)], promoted=[1])["text"]


def test_stage_breakdown_divides_by_trained_examples():
    rows = stage_breakdown({MAIN_JOB: 10, "serving": 100, "reward": 50, "learner": 200},
                           learner_stages={"update": 120, "score": 30}, reward_stages={"train": 20},
                           rollouts=50, votes=40)
    got = {(r["process"], r["stage"]): (r["cpu_s"], r["per_rollout_s"], r["per_vote_s"]) for r in rows}
    assert got[("learner", "(all)")] == (200, 4.0, None)
    assert got[("learner", "update")] == (120, 2.4, None)
    assert got[("learner", "score")] == (30, 0.6, None)
    assert got[("learner", "other")] == (50, 1.0, None)
    assert got[("reward", "(all)")] == (50, 1.0, 1.25)
    assert got[("reward", "train")] == (20, 0.4, 0.5)
    assert got[("reward", "other")] == (30, 0.6, 0.75)
    assert got[("serving", "(all)")] == (100, 2.0, None)
    assert got[("all", "(all)")] == (360, 7.2, None)


def test_stage_breakdown_tolerates_missing_counters_and_no_training():
    rows = stage_breakdown({"serving": 10}, {}, {}, rollouts=0, votes=None)
    assert [(r["process"], r["stage"], r["per_rollout_s"]) for r in rows] == [("serving", "(all)", None),
                                                                             ("all", "(all)", None)]


def test_metric_parsing_by_label_and_trained_votes():
    metrics = [("rlhf_learner_stage_cpu_seconds_total", {"stage": "update"}, 3.0),
               ("rlhf_learner_stage_cpu_seconds_created", {"stage": "update"}, 1.7e9),
               ("rlhf_learner_stage_cpu_seconds_total", {"stage": "read"}, 0.5),
               ("rlhf_reward_training_examples_seen", {"kind": "pointwise"}, 120.0),
               ("rlhf_reward_training_examples_seen", {"kind": "pairwise"}, 7.0)]
    assert by_label(metrics, "rlhf_learner_stage_cpu_seconds", "stage") == {"update": 3.0, "read": 0.5}
    assert trained_votes(metrics) == 120.0
    assert trained_votes([("rlhf_reward_training_examples_total", {}, 9.0)]) == 9.0
    assert trained_votes([]) is None


def test_tree_cpu_counts_grandchildren():
    # A "main job" whose child (named like the learner) runs a grandchild that burns CPU for ~0.5 s.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    main = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, 'learner.cli'])"
    proc = subprocess.Popen([sys.executable, "-c", main])
    try:
        cpu = TreeCPU(proc.pid)
        deadline = time.monotonic() + 20
        while cpu.sample().get("learner", 0) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cpu.totals()["learner"] >= 0.45
        assert MAIN_JOB in cpu.totals()
    finally:
        for p in TreeCPU(proc.pid).main.children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()
