"""Hypothesis-made malformed V2 REST bodies: binary-extension bodies whose header length, JSON header, sizes,
shapes and datatypes disagree with each other and with the model, and JSON bodies with mutated fields.

Complements the table in `tests/server/test_bad_input.py` (one hand-written case per rule) with generated
combinations. Every answer is a success or a 4xx naming the problem in the V2 shape; afterwards the server
still serves good requests.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.server.openapi import DATATYPES
from tests.fuzz.conftest import FuzzServer, examples
from tests.fuzz.helpers import GOOD_V2, assert_serves, assert_v2_answer

HLEN = "Inference-Header-Content-Length"
MODELS = ["identity_fp32", "identity_int64", "identity_bytes", "add_sub", "versioned", "tiny-embed"]
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4}
ITEMSIZE |= {"INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
FUZZ = settings(
    max_examples=examples(120),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
dims = st.one_of(
    st.integers(0, 9),
    st.integers(-3, 0),
    st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64]),
)


def _dumps(doc: Any) -> bytes:
    """JSON as a client may send it (integers past 64 bits included, which orjson refuses to write)."""
    return json.dumps(doc).encode()


def _count(shape: list[int]) -> int | None:
    """Elements of a plausible shape; None when it is not one (negative or absurdly large)."""
    if any(d < 0 for d in shape):
        return None
    n = math.prod(shape)
    return n if n <= 4096 else None


@st.composite
def bytes_elements(draw: st.DrawFn, count: int) -> bytes:
    """`count` length-prefixed BYTES elements, maybe with a lying length prefix."""
    parts = [draw(st.binary(max_size=6)) for _ in range(count)]
    blob = b"".join(struct.pack("<I", len(p)) + p for p in parts)
    if parts and draw(st.booleans()):
        at = draw(st.integers(0, len(parts) - 1))
        offset = sum(4 + len(p) for p in parts[:at])
        lie = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, len(parts[at]) + 1]))
        blob = blob[:offset] + struct.pack("<I", lie) + blob[offset + 4 :]
    return blob


SIGNATURES: dict[str, list[tuple[str, str]]] = {
    "identity_fp32": [("input", "FP32")],
    "identity_int64": [("input", "INT64")],
    "identity_bytes": [("input", "BYTES")],
    "add_sub": [("a", "FP32"), ("b", "INT64")],
    "versioned": [("input", "FP32")],
    "tiny-embed": [("text", "BYTES")],
}


@st.composite
def binary_input(draw: st.DrawFn, model: str, index: int) -> tuple[dict[str, Any], bytes]:
    """One input of a binary request: its JSON entry and its bytes (which may not match the entry). Mostly
    the model's own name, datatype and a plausible shape, so that many requests get past decoding."""
    expected = SIGNATURES[model]
    real_name, real_type = expected[index % len(expected)]
    if draw(st.integers(0, 3)):
        name, datatype = real_name, real_type
        shape = [draw(st.integers(0, 9)), 4] if real_type != "BYTES" or model != "tiny-embed" else [2]
    else:
        name = draw(st.sampled_from(["input", "a", "b", "text", "nope", ""]))
        datatype = draw(st.sampled_from([*DATATYPES, "FLOAT", "fp32", ""]))
        shape = draw(st.lists(dims, max_size=4))
    if draw(st.integers(0, 4)) == 0:
        shape = [draw(dims) for _ in shape]
    count = _count(shape)
    if count is not None and datatype in ITEMSIZE and draw(st.integers(0, 3)):
        blob = bytes(count * ITEMSIZE[datatype])  # the size the shape asks for
    elif count is not None and datatype == "BYTES" and draw(st.integers(0, 3)):
        blob = draw(bytes_elements(count))
    else:
        blob = draw(st.binary(max_size=64))
    size: Any = len(blob)
    kind = draw(st.sampled_from(["exact"] * 5 + ["off", "negative", "string", "missing", "huge"]))
    if kind == "off":
        size = max(len(blob) + draw(st.integers(-4, 4)), 0)
    elif kind == "negative":
        size = -len(blob) - 1
    elif kind == "string":
        size = str(len(blob))
    elif kind == "huge":
        size = 2**63
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if kind != "missing":
        entry["parameters"] = {"binary_data_size": size}
    return entry, blob


@st.composite
def binary_request(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(model, body, headers) of a binary-extension request, inconsistent in generated ways."""
    model = draw(st.sampled_from(MODELS))
    count = draw(st.sampled_from([len(SIGNATURES[model])] * 4 + [0, 1, 2, 3]))
    inputs = [draw(binary_input(model, i)) for i in range(count)]
    doc: dict[str, Any] = {"inputs": [entry for entry, _ in inputs]}
    if draw(st.booleans()):
        doc["outputs"] = [
            {"name": draw(st.sampled_from(["output", "sum", "x"])), "parameters": {"binary_data": True}}
        ]
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.dictionaries(st.sampled_from(["timeout", "priority", "binary_data_output"]), json_values)
        )
    header = _dumps(doc)
    mutation = draw(st.sampled_from(["none"] * 5 + ["truncate", "flip", "garbage"]))
    if mutation == "truncate" and header:
        header = header[: draw(st.integers(0, len(header) - 1))]
    elif mutation == "flip" and header:
        at = draw(st.integers(0, len(header) - 1))
        header = header[:at] + bytes([header[at] ^ draw(st.integers(1, 255))]) + header[at + 1 :]
    elif mutation == "garbage":
        header = draw(st.binary(max_size=40))
    body = header + b"".join(blob for _, blob in inputs) + draw(st.sampled_from([b"", b"", b"\x00", b"tail"]))
    length = draw(st.sampled_from(["exact"] * 6 + ["off", "zero", "negative", "text", "huge", "absent"]))
    values = {
        "exact": str(len(header)),
        "off": str(len(header) + draw(st.integers(-3, 3))),
        "zero": "0",
        "negative": "-1",
        "text": draw(st.sampled_from(["ten", "1e3", "", "+5", "0x10", "9" * 40])),
        "huge": str(2**64),
    }
    headers = {"content-type": "application/octet-stream"}
    if length != "absent":
        headers[HLEN] = values[length]
    return model, body, headers


def _mutate(doc: Any, path: list[Any], value: Any, delete: bool) -> Any:
    """`doc` with the element at `path` (indices taken modulo each level's size) replaced by `value`, or
    deleted."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = list(doc)[path[0] % len(doc)]
        copy = dict(doc)
        if delete and len(path) == 1:
            del copy[key]
        else:
            copy[key] = _mutate(doc[key], path[1:], value, delete)
        return copy
    index = path[0] % len(doc)
    items = list(doc)
    if delete and len(path) == 1:
        del items[index]
    else:
        items[index] = _mutate(doc[index], path[1:], value, delete)
    return items


@st.composite
def mutated_json(draw: st.DrawFn) -> tuple[str, bytes]:
    """A good infer request with a few fields replaced by arbitrary JSON or deleted."""
    model = draw(st.sampled_from(MODELS))
    doc: Any = {
        **GOOD_V2,
        "id": "x",
        "outputs": [{"name": "output"}],
        "parameters": {"timeout": 10**9, "priority": 0},
    }
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.lists(st.integers(0, 7), min_size=1, max_size=5))
        doc = _mutate(doc, path, draw(json_values), draw(st.booleans()))
    return model, _dumps(doc)


@pytest.fixture(scope="module")
def http(fuzz_server: FuzzServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base, headers=fuzz_server.headers("user"), timeout=30) as client:
        yield client


@FUZZ
@given(request=binary_request())
def test_binary_bodies(http: httpx.Client, request: tuple[str, bytes, dict[str, str]]) -> None:
    model, body, headers = request
    assert_v2_answer(http.post(f"/v2/models/{model}/infer", content=body, headers=headers))


@FUZZ
@given(request=mutated_json())
def test_mutated_json_bodies(http: httpx.Client, request: tuple[str, bytes]) -> None:
    model, body = request
    assert_v2_answer(http.post(f"/v2/models/{model}/infer", content=body))


@FUZZ
@given(body=st.binary(max_size=256), header=st.none() | st.integers(-5, 300).map(str))
def test_random_bytes(http: httpx.Client, body: bytes, header: str | None) -> None:
    headers = {HLEN: header} if header is not None else {}
    assert_v2_answer(http.post("/v2/models/identity_fp32/infer", content=body, headers=headers))


def test_empty_outputs_list_means_all_outputs(http: httpx.Client) -> None:
    """Found by `test_mutated_json_bodies`: `"outputs": []` ran the model for no output and failed (500)."""
    a = {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    b = {"name": "b", "datatype": "INT64", "shape": [1, 4], "data": [1, 1, 1, 1]}
    response = http.post("/v2/models/add_sub/infer", json={"inputs": [a, b], "outputs": []})
    assert response.status_code == 200, response.text
    assert {o["name"] for o in response.json()["outputs"]} == {"sum", "diff"}


def test_still_serves(fuzz_server: FuzzServer) -> None:
    assert_serves(fuzz_server)
