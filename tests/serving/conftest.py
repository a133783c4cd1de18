"""One broker and one serving process for the serving tests.

The broker is the serving tests' own, so the outage test can stop and restart it without
touching the broker the rest of the suite uses.
"""

import uuid

import pytest
from openai import OpenAI

from proto.topics import KafkaSettings, ensure_topics
from tests.conftest import kafka_env
from loop.processes import Service, free_port, kafka_ctl

BROKER_PORT = free_port(consecutive=2)  # the broker's controller listens on port + 1
MODEL = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin-token"


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
def serving_env(broker, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("serving")
    return {**kafka_env(broker), "RLHF_SERVING_DATA_DIR": str(data), "RLHF_SERVING_MAX_MODEL_LEN": "1024",
            "RLHF_SERVING_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture(scope="session")
def server(serving_env, tmp_path_factory) -> Service:
    svc = Service("serving.cli", free_port(), serving_env, tmp_path_factory.mktemp("logs") / "serving.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
