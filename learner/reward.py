"""Client of the reward service's ``POST /v1/score``.

Request ``{"inputs": [{"messages": [{"role": ..., "content": ...}, ...], "response": "...",
"finish_reason": "stop" | "length"}]}``, reply ``{"rewards": [float, ...], "reward_model_version": int,
"heldout_balanced_accuracy": float | null, "heldout_votes": int}``: one score per input, in order, in the
reward model's units (log-odds of a thumbs up, see reward_service/), and how well the scoring version
did on its held-out votes.
"""

from dataclasses import dataclass

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential


@dataclass(frozen=True)
class ScoreRequest:
    """One response to score: the prompt's chat messages, the response text, and whether the response
    ended by itself (``"stop"``) or was cut off at its token budget (``"length"``)."""

    messages: list[dict[str, str]]
    response: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Scores:
    """A score reply: ``rewards`` (one per input), the reward-model version that produced them, and its
    held-out balanced accuracy (None until measured) over ``heldout_votes`` votes."""

    rewards: list[float]
    reward_model_version: int
    heldout_balanced_accuracy: float | None
    heldout_votes: int


def transient(exc: BaseException) -> bool:
    """Worth retrying: the service is starting, restarting or overloaded."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (429, 502, 503, 504)


class RewardClient:
    """Scores responses through the reward service; retries transient failures with backoff.

    Raises ``httpx.HTTPError`` once retries are exhausted or on a non-transient error status, and
    ``ValueError`` when the reply does not hold one reward per input.
    """

    def __init__(self, base_url: str, timeout_s: float = 60.0):
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    @retry(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(6),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    )
    def score(self, items: list[ScoreRequest]) -> Scores:
        """Score ``items``, one reward per item."""
        body = {
            "inputs": [
                {"messages": it.messages, "response": it.response, "finish_reason": it.finish_reason}
                for it in items
            ]
        }
        reply = self._http.post("/v1/score", json=body)
        reply.raise_for_status()
        data = reply.json()
        rewards = [float(r) for r in data["rewards"]]
        if len(rewards) != len(items):
            raise ValueError(f"reward service returned {len(rewards)} rewards for {len(items)} inputs")
        accuracy = data.get("heldout_balanced_accuracy")
        return Scores(
            rewards,
            int(data["reward_model_version"]),
            None if accuracy is None else float(accuracy),
            int(data.get("heldout_votes", 0)),
        )

    def close(self) -> None:
        self._http.close()
