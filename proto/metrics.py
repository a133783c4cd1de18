"""The base of every service's Prometheus metrics: one registry per instance, one naming scheme.

Each service's ``metrics.py`` subclasses :class:`ServiceMetrics` and declares its families as attributes;
the service builds one instance and passes it to whatever records metrics. Every family is named
``rlhf_<service>_<name>`` (counters also get prometheus_client's ``_total``), and the instance's own
registry is what the service's ``/metrics`` exposes, so several services (or several apps of one, in
tests) live in one process without clashing and a scrape sees exactly that service's series.
"""

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    """A registry whose families are all named ``rlhf_<service>_<name>``.

    ``service``: ``serving``, ``learner`` or ``reward``; it becomes the prefix. The factory methods take the
    name without the prefix, the help text and the label names, as prometheus_client's constructors do.
    """

    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.prefix = f"rlhf_{service}_"

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.prefix + name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.prefix + name, documentation, labels, registry=self.registry)

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(self.prefix + name, documentation, labels, buckets=buckets, registry=self.registry)

    def exposition(self) -> bytes:
        """This registry's series in Prometheus' text format (serve it as ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
