"""One broker and one serving process for the serving tests.

The broker is the serving tests' own (port 9192), so the outage test can stop and restart it without
touching the broker the rest of the suite uses.
"""

import uuid

import pytest
from openai import OpenAI

from proto.topics import KafkaSettings, ensure_topics
from tests.conftest import kafka_env
from tests.services import Service, kafka_ctl

BROKER_PORT = 9192
SERVING_PORT = 8180
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def broker() -> KafkaSettings:
    kafka_ctl("start", BROKER_PORT)
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{BROKER_PORT}", topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(settings)
    yield settings
    kafka_ctl("stop", BROKER_PORT)


@pytest.fixture(scope="module")
def serving_env(broker, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("serving")
    return {**kafka_env(broker), "RLHF_SERVING_DATA_DIR": str(data), "RLHF_SERVING_MAX_MODEL_LEN": "1024"}


@pytest.fixture(scope="module")
def server(serving_env, tmp_path_factory) -> Service:
    svc = Service("serving.cli", SERVING_PORT, serving_env, tmp_path_factory.mktemp("logs") / "serving.log")
    svc.start(ready_path="/readyz")
    yield svc
    svc.stop()


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
