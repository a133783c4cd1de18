"""Identity, ownership and limits, tried as a hostile client would, on the real stack: two serving
processes (each with its own engine) sharing the keys file and the feedback secret, the real broker.

``server`` (conftest) runs in anonymous mode; ``replica`` runs on the defaults (keys required, default
limits) with its own data directory, so a vote that it accepts for ``server``'s response was checked from
the feedback token alone.
"""

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import closing

import httpx
import openai
import pytest
from openai import OpenAI

from loop.processes import Service, free_port
from proto import events_pb2
from proto.api_keys import KeyFile, digest
from serving.signing import Signer
from tests.conftest import ROOT, TopicReader, kafka_env
from tests.serving.conftest import MODEL, SECRET, auth

HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def replica(broker, keys_file, api_keys, tmp_path_factory) -> Service:
    env = {**kafka_env(broker), "RLHF_SERVING_DATA_DIR": str(tmp_path_factory.mktemp("replica")),
           "RLHF_SERVING_MAX_MODEL_LEN": "1024", "RLHF_SERVING_API_KEYS_FILE": str(keys_file),
           "RLHF_SERVING_SECRET": SECRET}
    svc = Service("serving.cli", free_port(), env, tmp_path_factory.mktemp("logs") / "replica.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()


@pytest.fixture
def new_user(keys_file):
    """Makes a user with a fresh key (fresh limits); returns the key."""
    return lambda user_id: KeyFile(keys_file).add(user_id)


def chat(url: str, key: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=auth(key), timeout=120,
                      json={"model": MODEL, "messages": HI, "max_tokens": 2, **extra})


def vote(url: str, key: str | None, response_id: str, token: str, rating: str = "up",
         headers: dict[str, str] | None = None, **kw) -> httpx.Response:
    headers = {**(auth(key) if key else {}), **(headers or {})}
    return httpx.post(f"{url}/v1/feedback", headers=headers, timeout=30,
                      json={"response_id": response_id, "feedback_token": token, "rating": rating}, **kw)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_keys_are_required_by_default(replica, broker):
    with closing(TopicReader(broker, "interactions")) as interactions:
        no_key = httpx.post(f"{replica.url}/v1/chat/completions", json={"model": MODEL, "messages": HI})
        error = error_of(no_key, 401)
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        assert "Authorization: Bearer" in error["message"]
        assert error_of(chat(replica.url, "rlhf-not-a-key"), 401)["message"].startswith("Incorrect API key")
        basic = httpx.post(f"{replica.url}/v1/chat/completions", headers={"Authorization": "Basic YTpi"},
                           json={"model": MODEL, "messages": HI})
        assert error_of(basic, 401)["code"] == "invalid_api_key"
        assert error_of(httpx.post(f"{replica.url}/v1/feedback", json={}), 401)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{replica.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
                model=MODEL, messages=HI)
        assert interactions.read(1, timeout_s=3) == []  # nothing was generated or logged
    assert httpx.get(f"{replica.url}/v1/models").status_code == 200  # open, as are health and metrics


def test_a_key_made_with_the_cli_works_at_once_and_is_stored_hashed(replica, broker, keys_file):
    made = subprocess.run(
        [sys.executable, "-m", "serving.keys", "--api-keys-file", str(keys_file), "add", "carol"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    key = made.stdout.strip()
    assert key.startswith("rlhf-") and len(key) > 40
    stored = keys_file.read_text()
    assert key not in stored and f"{digest(key)} carol\n" in stored
    assert os.stat(keys_file).st_mode & 0o777 == 0o600
    with closing(TopicReader(broker, "interactions")) as interactions:
        r = chat(replica.url, key)  # the running replica re-reads the changed file
        assert r.status_code == 200, r.text
        [event] = interactions.read(1)
        assert (event.response_id, event.user_id) == (r.json()["id"], "carol")


def forge(token: str, **changes) -> str:
    """``token`` with its payload edited and the original signature kept."""
    payload, _, mac = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edited = base64.urlsafe_b64encode(json.dumps({**claims, **changes}).encode()).rstrip(b"=").decode()
    return f"{edited}.{mac}"


def test_only_the_recipient_votes_and_any_replica_accepts_it(server, replica, broker, api_keys):
    alice, mallory = api_keys["alice"], api_keys["mallory"]
    with closing(TopicReader(broker, "feedback")) as feedback:
        r = chat(server.url, alice)  # served by one replica ...
        assert r.status_code == 200, r.text
        [choice] = r.json()["choices"]
        rid, token = choice["response_id"], choice["feedback_token"]
        other = chat(server.url, alice).json()["choices"][0]

        # mallory, on either replica, with alice's token: refused
        for url in (server.url, replica.url):
            error = error_of(vote(url, mallory, rid, token), 403)
            assert (error["type"], error["code"]) == ("permission_error", "not_your_response")
        # a token edited to name mallory, or a made-up one, or one for another response: refused
        forged = forge(token, u="mallory")
        assert error_of(vote(replica.url, mallory, rid, forged), 403)["code"] == "invalid_feedback_token"
        assert error_of(vote(replica.url, mallory, rid, "e30.AAAA"), 403)["code"] == "invalid_feedback_token"
        wrong = error_of(vote(replica.url, alice, rid, other["feedback_token"]), 403)
        assert wrong["code"] == "invalid_feedback_token" and other["response_id"] in wrong["message"]
        # a genuine token past its expiry (signed with the shared secret, as a replica would)
        expired = Signer(SECRET.encode()).feedback_token(rid, "alice", 0, ttl_s=-1)
        error = error_of(vote(replica.url, alice, rid, expired), 403)
        assert error["code"] == "feedback_token_expired" and "closed" in error["message"]
        assert feedback.read(1, timeout_s=3) == []  # none of it reached the training data

        # ... and alice's vote is accepted by the other replica, which never saw the response
        ok = vote(replica.url, alice, rid, token, "down")
        assert ok.status_code == 200, ok.text
        assert (ok.json()["response_id"], ok.json()["policy_version"]) == (rid, 0)
        [event] = feedback.read(1)
        assert (event.feedback_id, event.response_id, event.user_id, event.rating) == (
            ok.json()["feedback_id"], rid, "alice", events_pb2.RATING_DOWN)
        assert feedback.read(1, timeout_s=2) == []


def test_a_vote_flood_gets_429_and_only_the_allowed_votes_reach_kafka(replica, broker, new_user):
    key = new_user("flooder")
    r = chat(replica.url, key)
    [choice] = r.json()["choices"]
    with closing(TopicReader(broker, "feedback")) as feedback:
        started = time.monotonic()
        votes = [vote(replica.url, key, choice["response_id"], choice["feedback_token"], ("up", "down")[i % 2])
                 for i in range(40)]
        elapsed = time.monotonic() - started
        statuses = [v.status_code for v in votes]
        assert statuses[:30] == [200] * 30  # the default: 30 per minute, a minute's worth at once
        refilled = int(elapsed / 2) + 1  # 0.5 votes/s come back while the flood runs
        assert statuses[30:].count(429) >= 10 - refilled and set(statuses[30:]) <= {200, 429}
        limited = next(v for v in votes if v.status_code == 429)
        error = limited.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        accepted = [v.json()["feedback_id"] for v in votes if v.status_code == 200]
        assert [e.feedback_id for e in feedback.read(len(accepted))] == accepted
        assert feedback.read(1, timeout_s=2) == []


def test_chat_rate_limit(replica, new_user):
    """72 requests at once (checked on arrival, before any generation): the default allows 60 a minute."""
    key = new_user("chatty")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=auth(key), timeout=300) as http:
            return await asyncio.gather(*(http.post(f"{replica.url}/v1/chat/completions", json={
                "model": MODEL, "messages": HI, "max_tokens": 1}) for _ in range(72)))

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert set(statuses) == {200, 429} and 60 <= statuses.count(200) <= 64, statuses


def test_streams_per_user_are_capped(replica, new_user):
    key = new_user("streamer")
    # the end-of-text tokens banned, so each stream runs until the client leaves (closing it aborts it)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 900, "logit_bias": {"0": -100, "2": -100}, "stream": True}
    with httpx.Client(base_url=replica.url, headers=auth(key), timeout=120) as http:
        streams = [http.stream("POST", "/v1/chat/completions", json=body) for _ in range(4)]
        opened = [s.__enter__() for s in streams]
        assert [o.status_code for o in opened] == [200] * 4
        lines = [o.iter_lines() for o in opened]  # kept: a dropped iterator closes its response
        for stream_lines in lines:
            next(stream_lines)  # each is generating
        fifth = http.post("/v1/chat/completions", json=body)
        error = error_of(fifth, 429)
        assert error["code"] == "rate_limit_exceeded" and "at most 4" in error["message"]
        assert fifth.headers["retry-after"] == "1"
        for s in streams:
            s.__exit__(None, None, None)
        # closed streams give their slots back (once the server sees the client gone)
        deadline = time.monotonic() + 60
        while (again := http.post("/v1/chat/completions", json={**body, "max_tokens": 2})).status_code == 429:
            assert time.monotonic() < deadline, "stream slots were not released"
            time.sleep(1)
        assert again.status_code == 200


def test_anonymous_mode_issues_a_signed_identity_and_refuses_a_tampered_one(server, broker, api_keys):
    with closing(TopicReader(broker, "feedback")) as feedback, httpx.Client(base_url=server.url, timeout=120) as web:
        first = web.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2})
        assert first.status_code == 200, first.text
        cookie = web.cookies["rlhf_identity"]
        user, _, signature = cookie.partition(".")
        assert user.startswith("anon-") and signature
        assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Lax" in first.headers["set-cookie"]
        [choice] = first.json()["choices"]
        ok = web.post("/v1/feedback", json={"response_id": choice["response_id"],
                                            "feedback_token": choice["feedback_token"], "rating": "up"})
        assert ok.status_code == 200 and "set-cookie" not in ok.headers  # the same identity, kept
        assert feedback.read(1)[0].user_id == user

        # another browser cannot take over the identity by editing the cookie
        tampered = ("anon-" + "0" * 24) + "." + signature
        r = httpx.post(f"{server.url}/v1/feedback", cookies={"rlhf_identity": tampered}, json={
            "response_id": choice["response_id"], "feedback_token": choice["feedback_token"], "rating": "down"})
        assert error_of(r, 401)["code"] == "invalid_api_key"
        assert "Max-Age=0" in r.headers["set-cookie"]  # cleared: the next request gets a new identity
        # a key, when sent, decides alone, in anonymous mode too
        assert error_of(chat(server.url, "rlhf-wrong"), 401)["code"] == "invalid_api_key"
        assert feedback.read(1, timeout_s=2) == []

    # one client IP gets a bounded number of new identities (10 a minute), whatever X-Forwarded-For it
    # claims: serving trusts no proxy by default
    spoofed = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(15)]
    statuses = [vote(server.url, None, "chatcmpl-x", "e30.AAAA", headers=h).status_code for h in spoofed]
    first_429 = statuses.index(429)
    assert set(statuses[:first_429]) == {403} and first_429 <= 10 and set(statuses[first_429:]) == {429}
    limited = vote(server.url, None, "chatcmpl-x", "e30.AAAA", headers={"X-Forwarded-For": "198.51.100.7"})
    error = error_of(limited, 429)
    assert error["code"] == "rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
    assert "from 127.0.0.1 " in error["message"]


def test_replica_secrets_agree_on_one_machine(tmp_path):
    """Without a configured secret, replicas that share the state dir generate and read one file (0600)."""
    from serving.signing import load_secret

    path = tmp_path / "serving" / "secret"
    secrets = []
    threads = [threading.Thread(target=lambda: secrets.append(load_secret(None, path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(secrets)) == 1 and len(secrets[0]) == 64
    assert os.stat(path).st_mode & 0o777 == 0o600
