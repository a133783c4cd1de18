"""Serving's Prometheus metrics (prefix ``rlhf_``), defined once here. See README "Metrics" for how to read them.

Latency buckets span 10 ms to 2 min because a CPU engine answers in seconds, a GPU one in milliseconds.
"""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

REQUESTS = Counter("rlhf_requests_total", "HTTP requests handled, by endpoint and status code.",
                   ["endpoint", "status"])
REQUEST_LATENCY = Histogram("rlhf_request_latency_seconds", "Wall time from request to last byte (s).",
                            ["endpoint"], buckets=_LATENCY_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram("rlhf_time_to_first_token_seconds",
                                "Time from request to the first generated token (s).", buckets=_LATENCY_BUCKETS)
GENERATED_TOKENS = Counter("rlhf_generated_tokens_total", "Completion tokens generated, by policy version.",
                           ["policy_version"])
PROMPT_TOKENS = Counter("rlhf_prompt_tokens_total", "Prompt tokens processed.")
FEEDBACK = Counter("rlhf_feedback_total", "Thumbs votes accepted, by rating and policy version of the response.",
                   ["rating", "policy_version"])
POLICY_VERSION = Gauge("rlhf_policy_version", "Policy version the engine is serving now.")
PRODUCE_ERRORS = Counter("rlhf_produce_errors_total", "Failed attempts to deliver spooled events to Kafka.")
EVENTS_DELIVERED = Counter("rlhf_events_delivered_total", "Events acknowledged by Kafka, by topic.", ["topic"])
SPOOL_DEPTH = Gauge("rlhf_spool_depth", "Events accepted and durable on local disk, not yet acknowledged by Kafka.")
SWAP_DURATION = Histogram("rlhf_swap_duration_seconds", "Time to load a policy's weights into the engine (s).",
                          buckets=_LATENCY_BUCKETS)
GENERATION_PAUSE = Histogram("rlhf_generation_pause_seconds",
                             "Time new requests were held during a swap, draining in-flight ones included (s).",
                             buckets=_LATENCY_BUCKETS)
SWAP_CUT_REQUESTS = Counter("rlhf_swap_cut_requests_total",
                            "Requests cut by a swap that waited swap_drain_timeout_s for them to finish.")
GENERATION_TIMEOUTS = Counter("rlhf_generation_timeouts_total",
                              "Requests stopped at max_generation_s (finish reason length).")
SWAP_FAILURES = Counter("rlhf_swap_failures_total",
                        "Policy versions not swapped in: unresolvable URI, sha256 mismatch or failed load.")


def track_version(version: int) -> None:
    """Mark ``version`` as served and create its per-version series at 0.

    Without the zero, the first vote on a new version creates the series and Prometheus' rate() and
    increase() never count it.
    """
    POLICY_VERSION.set(version)
    for rating in ("up", "down"):
        FEEDBACK.labels(rating=rating, policy_version=str(version))
    GENERATED_TOKENS.labels(policy_version=str(version))
