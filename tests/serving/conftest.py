"""The serving tests' client. Their broker and serving process are tests/conftest.py's (shared with
tests/faults, which kills them); tests/serving/test_auth.py starts a second replica on the defaults."""

import pytest
from openai import OpenAI

from tests.conftest import ADMIN_TOKEN, BROKER_PORT, MODEL, SECRET  # noqa: F401  (imported by the tests)


@pytest.fixture
def client(server, api_keys) -> OpenAI:
    """alice's client."""
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120)


def auth(key: str) -> dict[str, str]:
    """The headers that authenticate with ``key``."""
    return {"Authorization": f"Bearer {key}"}
