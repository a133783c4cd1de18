"""What a hostile client does to connections, tried on the real serving process (``server``, conftest):
a body that never finishes, more connections than the server allows, a chunked body over the limit."""

import json
import socket
import time
from contextlib import ExitStack

import httpx
import pytest
from pydantic import ValidationError

from serving.settings import Settings
from tests.conftest import BODY_TIMEOUT_S, LIMIT_CONCURRENCY
from tests.serving.conftest import MODEL, auth

HI = [{"role": "user", "content": "Say hi."}]


def stalled_request(server, key: str) -> socket.socket:
    """A raw connection that declares a 100-byte body, sends 10 bytes of it and stops."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: serving\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"model\":")
    return sock


def read_response(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout_s`` passes)."""
    sock.settimeout(timeout_s)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_gets_408_in_time_while_others_are_served(server, api_keys):
    started = time.monotonic()
    with stalled_request(server, api_keys["alice"]) as sock:
        # meanwhile serving answers everyone else, a generation included
        assert httpx.get(f"{server.url}/v1/models", headers=auth(api_keys["alice"])).status_code == 200
        chat = httpx.post(f"{server.url}/v1/chat/completions", headers=auth(api_keys["mallory"]), timeout=60,
                          json={"model": MODEL, "messages": HI, "max_tokens": 2})
        assert chat.status_code == 200, chat.text
        response = read_response(sock, timeout_s=BODY_TIMEOUT_S + 20)  # ends only when serving closes it
    waited = time.monotonic() - started
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), response
    assert b"connection: close" in head.lower()
    error = httpx.Response(408, content=body).json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert f"within {BODY_TIMEOUT_S} s" in error["message"]
    assert BODY_TIMEOUT_S - 1 <= waited <= BODY_TIMEOUT_S + 10


def test_connections_over_the_limit_get_503_and_the_server_recovers(server, api_keys):
    models = f"{server.url}/v1/models"
    with ExitStack() as held:
        for _ in range(LIMIT_CONCURRENCY):
            held.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        deadline = time.monotonic() + 10
        while (status := httpx.get(models, headers=auth(api_keys["alice"])).status_code) != 503:
            assert status == 200 and time.monotonic() < deadline, "no 503 with the connection limit reached"
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    while (status := httpx.get(models, headers=auth(api_keys["alice"])).status_code) != 200:
        assert status == 503 and time.monotonic() < deadline, "still refused after the connections closed"
        time.sleep(0.2)


def chunks(total: int, size: int = 1 << 16):
    """A body of ``total`` bytes, sent chunked (httpx sends a generator without Content-Length)."""
    for _ in range(total // size):
        yield b"x" * size


def test_a_chunked_body_over_the_limit_gets_413_like_a_declared_one(server, api_keys):
    for total, key in ((2 << 20, api_keys["alice"]), (200 << 20, "rlhf-wrong-key")):
        r = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(total), timeout=60,
                       headers={"content-type": "application/json", **auth(key)})
        assert r.request.headers["transfer-encoding"] == "chunked"  # no Content-Length to refuse it early
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        assert error["message"] == "Request body exceeds 1048576 bytes."
    # a chunked body within the limit is read whole and served
    body = json.dumps({"model": MODEL, "max_tokens": 2, "messages": HI}).encode()
    r = httpx.post(f"{server.url}/v1/chat/completions", content=iter([body[:20], body[20:]]), timeout=60,
                   headers={"content-type": "application/json", **auth(api_keys["alice"])})
    assert r.status_code == 200, r.text


def test_trusted_proxies_must_be_addresses_or_networks():
    assert Settings(forwarded_allow_ips="10.0.0.0/8, ::1,*").forwarded_allow_ips == "10.0.0.0/8, ::1,*"
    assert Settings().forwarded_allow_ips == ""  # trust none
    with pytest.raises(ValidationError, match="'lb.internal' is not an IP address"):
        Settings(forwarded_allow_ips="10.0.0.0/8,lb.internal")
