"""Serving's Prometheus metrics (prefix ``rlhf_serving_``), defined once here. See README "Metrics" for how to
read them.

One :class:`ServingMetrics` per app, built in its lifespan and passed to the middleware, the engine, the
event log, the chat and feedback services and the policy follower; ``/metrics`` exposes its registry only.
Latency buckets span 10 ms to 2 min because a CPU engine answers in seconds, a GPU one in milliseconds.
"""

from proto.metrics import ServiceMetrics

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
ARMS = ("candidate", "incumbent")  # a live canary's two arms (the candidate's users, everyone else)


class ServingMetrics(ServiceMetrics):
    """Serving's metrics; every attribute below ``registry`` is one Prometheus family."""

    def __init__(self) -> None:
        super().__init__("serving")
        self.requests = self.counter(
            "requests", "HTTP requests handled, by endpoint and status code.", ["endpoint", "status"]
        )
        self.request_latency = self.histogram(
            "request_latency_seconds",
            "Wall time from request to last byte (s).",
            LATENCY_BUCKETS,
            ["endpoint"],
        )
        self.time_to_first_token = self.histogram(
            "time_to_first_token_seconds",
            "Time from request to the first generated token (s).",
            LATENCY_BUCKETS,
        )
        self.generated_tokens = self.counter(
            "generated_tokens", "Completion tokens generated, by policy version.", ["policy_version"]
        )
        self.prompt_tokens = self.counter("prompt_tokens", "Prompt tokens processed.")
        self.feedback = self.counter(
            "feedback",
            "Thumbs votes accepted, by rating and policy version of the response.",
            ["rating", "policy_version"],
        )
        self.policy_version = self.gauge("policy_version", "Policy version the engine is serving now.")
        self.produce_errors = self.counter(
            "produce_errors", "Failed attempts to deliver spooled events to Kafka."
        )
        self.events_delivered = self.counter(
            "events_delivered", "Events acknowledged by Kafka, by topic.", ["topic"]
        )
        self.spool_depth = self.gauge(
            "spool_depth", "Events accepted and durable on local disk, not yet acknowledged by Kafka."
        )
        self.swap_duration = self.histogram(
            "swap_duration_seconds", "Time to load a policy's weights into the engine (s).", LATENCY_BUCKETS
        )
        self.generation_pause = self.histogram(
            "generation_pause_seconds",
            "Time new requests were held during a swap, draining in-flight ones included (s).",
            LATENCY_BUCKETS,
        )
        self.swap_cut_requests = self.counter(
            "swap_cut_requests", "Requests cut by a swap that waited swap_drain_timeout_s for them to finish."
        )
        self.generation_timeouts = self.counter(
            "generation_timeouts", "Requests stopped at max_generation_s (finish reason length)."
        )
        self.swap_failures = self.counter(
            "swap_failures",
            "Policy versions not swapped in (either engine): unresolvable URI, sha256 mismatch, failed load "
            "or a canary engine that failed to start.",
        )
        self.canary_version = self.gauge(
            "canary_version", "Live canary's candidate version this replica serves to its canary users (0: none)."
        )
        self.canary_share = self.gauge(
            "canary_share", "Share of users (0-1) served the live canary's candidate here (0: no canary served)."
        )
        self.canary_requests = self.counter(
            "canary_requests",
            "Chat completions admitted while a live canary is served here, by arm (candidate or incumbent).",
            ["arm"],
        )
        self.canary_time_to_first_token = self.histogram(
            "canary_time_to_first_token_seconds",
            "Time from request to the first generated token while a live canary is served here, by arm (s): "
            "the two engines share the CPU, so this is the canary's cost to each arm's users.",
            LATENCY_BUCKETS,
            ["arm"],
        )
        for arm in ARMS:  # created at 0 so rate() counts the first request of each arm
            self.canary_requests.labels(arm=arm)

    def track_version(self, version: int, *, main: bool = True) -> None:
        """Mark ``version`` as served (by the main engine when ``main``, whose version is the
        ``policy_version`` gauge; the canary engine's is ``canary_version``, set while its canary is served)
        and create its per-version series at 0.

        Without the zero, the first vote on a new version creates the series and Prometheus' rate() and
        increase() never count it.
        """
        if main:
            self.policy_version.set(version)
        for rating in ("up", "down"):
            self.feedback.labels(rating=rating, policy_version=str(version))
        self.generated_tokens.labels(policy_version=str(version))
