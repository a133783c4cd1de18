"""Simulated users: chat through serving's HTTP API on the bundled prompts and vote by a hidden preference."""

import asyncio
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from openai import APIError, AsyncOpenAI

from loop.preference import Preference
from proto.api_keys import KeyFile

log = logging.getLogger(__name__)
PROMPTS_FILE = Path(__file__).with_name("prompts.txt")


def user_id(i: int) -> str:
    """The user id of simulated user ``i``."""
    return f"sim-user-{i}"


def provision_keys(keys_file: Path, n_users: int) -> list[str]:
    """Fresh API keys for simulated users 0 … n_users-1 in serving's ``keys_file`` (their keys of an earlier
    run revoked), so the users authenticate like any client."""
    keys = KeyFile(keys_file)
    for i in range(n_users):
        keys.revoke(user_id(i))
    return [keys.add(user_id(i)) for i in range(n_users)]


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """The prompts in ``path``, one per line (blank lines and ``#`` comments skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class VersionStats:
    """What users saw of one policy version: responses, their words, and votes (one per user and response)."""

    responses: int = 0
    words: int = 0  # whitespace-separated words over all responses
    latencies_s: list[float] = field(default_factory=list)  # each response's, request to last byte (s)
    votes_by: dict[tuple[str, str], bool] = field(default_factory=dict)  # (user, response id) -> thumbs up?

    def vote(self, user: str, response_id: str, up: bool) -> None:
        """Record a vote; the same user's later vote on the same response replaces the earlier one."""
        self.votes_by[(user, response_id)] = up

    @property
    def up(self) -> int:
        return sum(self.votes_by.values())

    @property
    def down(self) -> int:
        return len(self.votes_by) - self.up

    @property
    def up_rate(self) -> float | None:
        """Thumbs-up / votes, or None before the first vote."""
        return self.up / len(self.votes_by) if self.votes_by else None


@dataclass
class UserStats:
    """Counts over all simulated users, by policy version."""

    by_version: dict[int, VersionStats] = field(default_factory=lambda: defaultdict(VersionStats))
    errors: int = 0
    # What serving acknowledged, for audits (bench/chaos): response ids and feedback ids, in order.
    responses_accepted: list[str] = field(default_factory=list)
    votes_accepted: list[str] = field(default_factory=list)
    canary_users: set[str] = field(default_factory=set)  # users served a response marked ``canary: true``

    @property
    def votes(self) -> int:
        return sum(len(s.votes_by) for s in self.by_version.values())


class SimulatedUsers:
    """One user per API key, chatting concurrently until stopped; each votes with the feedback token of the
    reply it got.

    Args:
        base_url: serving's root URL, e.g. ``http://127.0.0.1:8000``.
        model: served model name.
        preference: the hidden taste that decides votes.
        api_keys: user i's key (see :func:`provision_keys`); one user per key.
        vote_rate: probability that a user votes on a response at all.
        max_tokens: completion budget per request (tokens).
        think_time_s: pause between a user's requests (s).
        seed: makes prompt choice and votes repeatable.
    """

    def __init__(self, base_url: str, model: str, preference: Preference, api_keys: list[str],
                 vote_rate: float = 0.8, max_tokens: int = 96, think_time_s: float = 0.5, seed: int = 0):
        self.base_url, self.model, self.preference, self.api_keys = base_url, model, preference, api_keys
        self.vote_rate, self.max_tokens, self.think_time_s = vote_rate, max_tokens, think_time_s
        self.prompts = load_prompts()
        self.seed = seed
        self.stats = UserStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every user until ``stop`` is set; requests in flight finish first (nothing half-sent)."""
        await asyncio.gather(*(self._user(i, key, stop) for i, key in enumerate(self.api_keys)))

    async def _user(self, i: int, key: str, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=2, timeout=300) as client, \
                httpx.AsyncClient(base_url=self.base_url, timeout=30, headers=headers) as http:
            await self._chat(i, client, http, stop)

    async def _chat(self, i: int, client: AsyncOpenAI, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1000 + i)
        user = user_id(i)
        while not stop.is_set():
            prompt = rng.choice(self.prompts)
            try:
                sent = time.monotonic()
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=self.max_tokens,
                    temperature=1.0)
                reply = raw.parse()
                version = int(raw.headers["x-policy-version"])
                text, finish = reply.choices[0].message.content or "", reply.choices[0].finish_reason
                self.stats.responses_accepted.append(reply.id)  # n = 1: the response id is the completion's
                if (reply.model_extra or {}).get("canary"):
                    self.stats.canary_users.add(user)
                stats = self.stats.by_version[version]
                stats.responses += 1
                stats.words += len(text.split())
                stats.latencies_s.append(time.monotonic() - sent)
                if rng.random() < self.vote_rate:
                    rating = "up" if rng.random() < self.preference.p_up(prompt, text, finish) else "down"
                    r = await http.post("/v1/feedback", json={
                        "response_id": reply.id, "feedback_token": reply.choices[0].feedback_token, "rating": rating})
                    r.raise_for_status()
                    self.stats.votes_accepted.append(r.json()["feedback_id"])
                    stats.vote(user, reply.id, rating == "up")
            except (APIError, httpx.HTTPError) as exc:
                self.stats.errors += 1
                log.warning("%s: request failed: %s", user, exc)
                await asyncio.sleep(2.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.think_time_s)
            except TimeoutError:
                pass
