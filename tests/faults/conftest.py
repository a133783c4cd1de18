"""Fault tests reuse the serving tests' private broker and server (a broker of their own that the tests
may stop; never the shared one) and the learner tests' model-backed fixtures."""

from tests.learner.conftest import make_interactions, scorer  # noqa: F401
from tests.serving.conftest import api_keys, broker, broker_dir, keys_file, server, serving_env  # noqa: F401
