"""Abuse of the HTTP framing: bodies over the limit (declared, chunked, or compressed bombs), unknown or lying
Content-Encoding, bodies cut short by a client that goes away, and slow clients that trickle a body or stall.

Each over-limit or malformed body is a 4xx in the endpoint's own error shape; a client that goes away is not
counted as a server error; the server keeps answering other clients while slow ones hold connections.
"""

from __future__ import annotations

import gzip
import socket
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.fuzz.conftest import LIMIT, FuzzServer, examples
from tests.fuzz.helpers import GOOD_V2, assert_openai_answer, assert_serves, assert_v2_answer

INFER = "/v2/models/identity_fp32/infer"
# (path, method, the error shape's checker): every endpoint family that reads a body.
BODY_ENDPOINTS = [
    (INFER, "POST", assert_v2_answer),
    ("/v2/repository/index", "POST", assert_v2_answer),
    ("/v1/completions", "POST", assert_openai_answer),
    ("/v1/embeddings", "POST", assert_openai_answer),
    ("/admin/v1/tenants/fuzz-abuse", "PUT", assert_openai_answer),
]
IDS = [path for path, _, _ in BODY_ENDPOINTS]


@pytest.fixture(scope="module")
def admin_http(fuzz_server: FuzzServer) -> Iterator[httpx.Client]:
    """The admin key: it may call every endpoint above."""
    with httpx.Client(base_url=fuzz_server.base, headers=fuzz_server.headers("admin"), timeout=30) as client:
        yield client


def _status_and_error(response: httpx.Response) -> tuple[int, str]:
    error = response.json()["error"]
    return response.status_code, error if isinstance(error, str) else error["message"]


def _chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


@pytest.mark.parametrize(("path", "method", "check"), BODY_ENDPOINTS, ids=IDS)
def test_chunked_body_over_the_limit(admin_http: httpx.Client, path: str, method: str, check: Any) -> None:
    """No Content-Length to refuse early: the limit is enforced while reading."""
    response = admin_http.request(method, path, content=_chunks(LIMIT + 1))
    check(response)
    assert _status_and_error(response)[0] == 413
    assert "limit" in _status_and_error(response)[1]


@pytest.mark.parametrize(("path", "method", "check"), BODY_ENDPOINTS, ids=IDS)
def test_declared_length_over_the_limit(fuzz_server: FuzzServer, path: str, method: str, check: Any) -> None:
    """Refused from the Content-Length alone, before the body is read (none is sent)."""
    host, port = fuzz_server.running.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nauthorization: Bearer {fuzz_server.admin_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {LIMIT * 50}\r\n\r\n".encode()
        )
        reply = _read_response(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    response = httpx.Response(
        int(head.split(b" ")[1]), content=body, headers={"content-type": "application/json"}
    )
    check(response)
    assert response.status_code == 413


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize(("path", "method", "check"), BODY_ENDPOINTS, ids=IDS)
def test_compression_bomb(
    admin_http: httpx.Client, path: str, method: str, check: Any, encoding: str
) -> None:
    """A small body that inflates past the limit: refused without inflating it all."""
    plain = b" " * (64 * LIMIT)
    body = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    assert len(body) < LIMIT
    response = admin_http.request(method, path, content=body, headers={"content-encoding": encoding})
    check(response)
    assert _status_and_error(response)[0] == 413


@settings(
    max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    encoding=st.sampled_from(["gzip", "deflate", "br", "x-gzip", "GZIP", "identity", "gzip, gzip", ""]),
    body=st.binary(max_size=128) | st.builds(gzip.compress, st.binary(max_size=128)),
    endpoint=st.sampled_from(BODY_ENDPOINTS),
)
def test_content_encoding_and_body_mismatch(
    admin_http: httpx.Client, encoding: str, body: bytes, endpoint: tuple[str, str, Any]
) -> None:
    path, method, check = endpoint
    check(admin_http.request(method, path, content=body, headers={"content-encoding": encoding}))


def _send_partial(server: FuzzServer, path: str, declared: int, sent: bytes) -> socket.socket:
    host, port = server.running.http_url.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: fuzz\r\nx-api-key: {server.user_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def _server_errors(server: FuzzServer) -> float:
    """Requests the server counted with a 5xx code."""
    text = httpx.get(server.base + "/metrics", headers=server.headers("admin"), timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "inferd_requests_total" and s.labels.get("code", "").startswith("5")
    )


def test_truncated_bodies_are_not_server_errors(fuzz_server: FuzzServer) -> None:
    """Clients that declare a body, send part of it and go away: no 5xx is counted, the server serves on."""
    before = _server_errors(fuzz_server)
    for path in (
        "/v2/models/identity_fp32/infer",
        "/v1/completions",
        "/v1/embeddings",
        "/v2/repository/index",
    ):
        for cut in (0, 1, 12):
            sock = _send_partial(fuzz_server, path, 100, b'{"inputs": [{"name"'[:cut])
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)  # the server answers or closes; either way it noticed the end
            sock.close()
    assert_serves(fuzz_server)
    assert _server_errors(fuzz_server) == before


def test_slow_clients_do_not_block_others(fuzz_server: FuzzServer) -> None:
    """One client trickles its body a byte at a time, others stall mid-body or mid-headers: meanwhile other
    requests are answered, and the trickled request is answered correctly once complete."""
    body = httpx.Request("POST", "http://x", json=GOOD_V2).read()
    trickler = _send_partial(fuzz_server, INFER, len(body), body[:5])
    stalled = [_send_partial(fuzz_server, INFER, len(body), body[: len(body) // 2]) for _ in range(8)]
    host, port = fuzz_server.running.http_url.split(":")
    half_headers = []
    for _ in range(8):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: fuzz\r\nContent-Le")
        half_headers.append(sock)
    done = threading.Event()
    answers: list[bytes] = []

    def trickle() -> None:
        for i in range(5, len(body)):
            if done.wait(0.002):
                break
            trickler.sendall(body[i : i + 1])
        answers.append(_read_response(trickler))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        for _ in range(5):
            assert_serves(fuzz_server)
    finally:
        thread.join(30)
        done.set()
        for sock in (*stalled, *half_headers):
            sock.close()
        trickler.close()
    assert answers and answers[0].startswith(b"HTTP/1.1 200"), answers
    assert b'"data":[1.0,2.0,3.0,4.0]' in answers[0]
    assert_serves(fuzz_server)
