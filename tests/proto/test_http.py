"""What every HTTP API shares (proto/http.py): ChatMessage, and the handlers that answer every error in
OpenAI's envelope. The validation messages of a chat request are in tests/serving/test_validation.py."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from proto import events_pb2
from proto.http import APIError, ChatMessage, StrictModel, install_error_handlers


def test_a_developer_message_with_text_parts_is_a_system_message_with_one_string():
    parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
    message = ChatMessage.model_validate({"role": "developer", "content": parts})
    assert message.as_turn() == {"role": "system", "content": "Be brief."}
    assert message.to_proto() == events_pb2.ChatMessage(role="system", content="Be brief.")


@pytest.mark.parametrize("message", [
    {"role": "user", "content": 5},  # strict: not converted to "5"
    {"role": "user", "content": "hi", "extra": 1},
    {"role": "user", "content": "hi", "name": "ann"},
    {"role": "tool", "content": "42"},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    {"role": "user", "content": "\ud800"},  # a lone surrogate is not UTF-8
])
def test_what_no_service_reads_is_refused(message):
    with pytest.raises(ValidationError):
        ChatMessage.model_validate(message)


class _Body(StrictModel):
    messages: list[ChatMessage]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    def echo(body: _Body) -> dict:
        return {"n": len(body.messages)}

    @app.get("/limited")
    def limited() -> dict:
        raise APIError(429, "Slow down.", "requests", code="rate_limit_exceeded",
                       headers={"Retry-After": "3"})

    @app.get("/broken")
    def broken() -> dict:
        raise RuntimeError("secret detail")

    return TestClient(app, raise_server_exceptions=False)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_malformed_body_is_400_naming_the_field_as_a_dotted_path(client):
    error = _error(client.post("/echo", json={"messages": [{"role": "robot", "content": "x"}]}), 400)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "messages.0.role",
                                                              "invalid_value")
    error = _error(client.post("/echo", content=b"{", headers={"content-type": "application/json"}), 400)
    assert (error["param"], error["code"]) == (None, "invalid_json")


def test_api_errors_keep_their_status_type_and_headers(client):
    response = client.get("/limited")
    error = _error(response, 429)
    assert (error["message"], error["type"]) == ("Slow down.", "requests")
    assert error["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "3"


def test_unknown_routes_and_methods_keep_their_status(client):
    assert _error(client.get("/nothing"), 404)["type"] == "invalid_request_error"
    assert _error(client.get("/echo"), 405)["type"] == "invalid_request_error"


def test_an_unexpected_exception_is_500_without_its_details(client):
    error = _error(client.get("/broken"), 500)
    assert (error["type"], error["message"]) == ("server_error", "Internal error: RuntimeError")
