"""The fault tests use tests/conftest.py's private broker and serving process (which they stop and kill) and
the learner tests' model-backed fixtures."""

from tests.learner.conftest import make_interactions, scorer  # noqa: F401
