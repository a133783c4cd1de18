"""kill -9 of serving with accepted events still in its spool while Kafka is down: after a restart every
accepted response and vote reaches Kafka exactly once."""

import signal
import time

import httpx
from openai import OpenAI

from loop.processes import kafka_ctl
from tests.conftest import BROKER_PORT, MODEL, TopicReader
from tests.serving.conftest import auth

N = 3


def test_sigkill_with_a_full_spool_loses_and_duplicates_nothing(server, broker, broker_dir, api_keys):
    interactions = TopicReader(broker, "interactions")
    feedback = TopicReader(broker, "feedback")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120)

    kafka_ctl("stop", BROKER_PORT, broker_dir)
    try:
        response_ids, feedback_ids = [], []
        for i in range(N):
            completion = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=8
            )
            response_ids.append(completion.id)
            vote = httpx.post(f"{server.url}/v1/feedback", headers=auth(api_keys["alice"]),
                              json={"response_id": completion.id, "rating": "down",
                                    "feedback_token": completion.choices[0].feedback_token})
            assert vote.status_code == 200, vote.text
            feedback_ids.append(vote.json()["feedback_id"])
        assert httpx.get(f"{server.url}/readyz").json()["spool_depth"] == 2 * N

        # No shutdown of any kind: the process and its engine are killed where they stand.
        server.stop(sig=signal.SIGKILL)
        assert server.exit_code() == -signal.SIGKILL
        server.start(ready_path="/healthz")
    finally:
        kafka_ctl("start", BROKER_PORT, broker_dir)
    interactions.reconnect()
    feedback.reconnect()

    got_interactions = interactions.read(N, timeout_s=60)
    got_feedback = feedback.read(N, timeout_s=30)
    assert [e.response_id for e in got_interactions] == response_ids
    assert [e.feedback_id for e in got_feedback] == feedback_ids
    time.sleep(3)  # anything sent twice would arrive by now
    assert interactions.read(1, timeout_s=3) == [] and feedback.read(1, timeout_s=1) == []
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "serving not ready after the broker came back"
        time.sleep(1)
    interactions.close()
    feedback.close()
