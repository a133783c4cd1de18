"""The whole loop on the real stack, briefly: simulated users' votes lead to a promoted policy version that
serving swaps in without a restart and that tags later responses."""

import json
import os
import subprocess
import sys

from loop.processes import ROOT, free_port
from tests.conftest import kafka_env


def test_votes_lead_to_a_promoted_version_served_in_place(kafka_settings, tmp_path):
    work = tmp_path / "work"
    cmd = [
        sys.executable, "-m", "loop.run", "--until-version", "1", "--duration", "900", "--users", "3",
        "--max-tokens", "48", "--batch-size", "4", "--progress-every", "30", "--no-prometheus",
        "--serving-port", str(free_port()), "--reward-port", str(free_port()), "--learner-port", str(free_port()),
        "--work-dir", str(work),
        # This test is about the plumbing (votes → reward → PPO → gates → swap), not about how fast the
        # policy improves (that is bench/loop): PPO from the first votes on, steps large enough to change
        # the greedy answers (an unchanged candidate is not published) within a KL budget they cannot break.
        "--learner-arg=--min-reward-accuracy=0", "--learner-arg=--publish-every=1",
        "--learner-arg=--learning-rate=1e-4", "--learner-arg=--kl-budget=1000", "--learner-arg=--ppo-epochs=2",
        "--learner-arg=--canary-samples=1",  # the gates' sampled answers: 4 where 16 are the default
        # promoted on the gates: a live canary needs more votes than three users cast in minutes
        # (tests/loop/test_canary_live.py runs one)
        "--learner-arg=--no-live-canary",
    ]
    env = {**os.environ, **kafka_env(kafka_settings)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    logs = {p.name: p.read_text() for p in (work / "logs").glob("*.log")}
    tails = {name: text[-3000:] for name, text in logs.items()}
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{tails}"
    assert "stopping" in done.stdout

    report = json.loads((work / "reports" / "report.json").read_text())
    rows = {row["version"]: row for row in report["versions"]}
    assert report["promoted"], f"no version promoted: {report}"
    assert rows[0]["responses"] > 0 and rows[0]["up"] + rows[0]["down"] > 0
    # Responses were served by a promoted version, swapped in while serving kept running.
    assert any(rows[v]["responses"] > 0 for v in report["promoted"]), report
    assert (work / "reports" / "report.png").stat().st_size > 0
    serving_log = logs["serving.log"]
    assert "now serving policy v" in serving_log
    assert serving_log.count("Application startup complete") == 1  # no restart
    # The simulated users authenticated with keys made for them (only hashes in the work dir's keys file),
    # and none of their calls was refused.
    stored = (work / "serving" / "api_keys").read_text().splitlines()
    assert sorted(line.split()[1] for line in stored) == ["sim-user-0", "sim-user-1", "sim-user-2"]
    assert '" 401' not in serving_log and '" 403' not in serving_log and '" 429' not in serving_log
