"""One broker and one serving process for the serving tests, and the API keys they call it with.

The broker is the serving tests' own, so the outage test can stop and restart it without
touching the broker the rest of the suite uses. The server runs in anonymous mode too (for the chat
page); tests/serving/test_auth.py starts a second replica on the defaults (keys only).
"""

import uuid

import pytest
from openai import OpenAI

from proto.topics import KafkaSettings, ensure_topics
from tests.conftest import kafka_env
from loop.processes import Service, free_port, kafka_ctl
from serving.keys import KeyFile

BROKER_PORT = free_port(consecutive=2)  # the broker's controller listens on port + 1
MODEL = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin-token"
SECRET = "test-secret-shared-by-the-replicas-0123456789"
USERS = ("alice", "mallory")


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory):
    return tmp_path_factory.mktemp("keys") / "api_keys"


@pytest.fixture(scope="session")
def api_keys(keys_file) -> dict[str, str]:
    """user id -> API key, in the keys file every test server reads."""
    keys = KeyFile(keys_file)
    return {user: keys.add(user) for user in USERS}


@pytest.fixture(scope="session")
def broker_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kafka")


@pytest.fixture(scope="session")
def broker(broker_dir) -> KafkaSettings:
    kafka_ctl("start", BROKER_PORT, broker_dir)
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{BROKER_PORT}", topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    yield settings
    kafka_ctl("stop", BROKER_PORT, broker_dir)


@pytest.fixture(scope="session")
def serving_env(broker, keys_file, api_keys, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("serving")
    return {**kafka_env(broker), "RLHF_SERVING_DATA_DIR": str(data), "RLHF_SERVING_MAX_MODEL_LEN": "1024",
            "RLHF_SERVING_ADMIN_TOKEN": ADMIN_TOKEN, "RLHF_SERVING_API_KEYS_FILE": str(keys_file),
            "RLHF_SERVING_SECRET": SECRET, "RLHF_SERVING_ANONYMOUS": "true",
            # the limits are tested on a replica with the defaults (test_auth.py); here tests share one user
            "RLHF_SERVING_CHAT_PER_MINUTE": "10000", "RLHF_SERVING_MAX_STREAMS_PER_USER": "64"}


@pytest.fixture(scope="session")
def server(serving_env, tmp_path_factory) -> Service:
    svc = Service("serving.cli", free_port(), serving_env, tmp_path_factory.mktemp("logs") / "serving.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()


@pytest.fixture
def client(server, api_keys) -> OpenAI:
    """alice's client."""
    return OpenAI(base_url=f"{server.url}/v1", api_key=api_keys["alice"], max_retries=0, timeout=120)


def auth(key: str) -> dict[str, str]:
    """The headers that authenticate with ``key``."""
    return {"Authorization": f"Bearer {key}"}
