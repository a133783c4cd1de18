"""Client of the reward service's ``POST /v1/score`` (the contract: proto/score.py).

One call scores a batch: a :class:`~proto.score.ScoreInput` per response (the prompt's chat messages, the
response text, its finish reason) and back a :class:`~proto.score.ScoreResponse`: one reward per input, in
order, in the reward model's units (log-odds of a thumbs up, see reward_service/), and how well the scoring
version did on its held-out votes.
"""

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from proto.score import ScoreInput, ScoreRequest, ScoreResponse


def transient(exc: BaseException) -> bool:
    """Worth retrying: the service is starting, restarting or overloaded."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (429, 502, 503, 504)


class RewardClient:
    """Scores responses through the reward service; retries transient failures with backoff.

    Raises ``httpx.HTTPError`` once retries are exhausted or on a non-transient error status, and
    ``ValueError`` (a pydantic ``ValidationError``) when the reply is not a score reply or does not hold one
    reward per input.
    """

    def __init__(self, base_url: str, timeout_s: float = 60.0):
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    @retry(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(6),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    )
    def score(self, inputs: list[ScoreInput]) -> ScoreResponse:
        """Score ``inputs``, one reward per input."""
        body = ScoreRequest(inputs=inputs).model_dump(mode="json", exclude_none=True)
        reply = self._http.post("/v1/score", json=body)
        reply.raise_for_status()
        scores = ScoreResponse.model_validate_json(reply.content)
        if len(scores.rewards) != len(inputs):
            n = len(scores.rewards)
            raise ValueError(f"reward service returned {n} rewards for {len(inputs)} inputs")
        return scores

    def close(self) -> None:
        self._http.close()
