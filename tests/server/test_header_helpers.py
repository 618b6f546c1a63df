"""The transports' header helpers: the request's headers as one dict, and the cost header's decimal."""

from __future__ import annotations

import pytest

from inferd.server.http_headers import header_dict, metadata_dict, raw_headers
from inferd.server.usage_headers import decimal_micros


def test_header_dict_keeps_the_first_of_a_repeated_name_and_decodes_latin1() -> None:
    raw = [
        (b"authorization", b"Bearer first"),
        (b"x-inferd-workflow", b"caf\xe9"),
        (b"authorization", b"Bearer second"),
    ]
    assert header_dict(raw) == {"authorization": "Bearer first", "x-inferd-workflow": "café"}
    assert header_dict([]) == {}


def test_metadata_dict_keeps_text_values_and_the_first_of_a_repeated_name() -> None:
    metadata = [
        ("authorization", "Bearer first"),
        ("trace-bin", b"\x00\x01"),
        ("authorization", "Bearer second"),
        ("x-inferd-workflow", "wf"),
    ]
    assert metadata_dict(metadata) == {"authorization": "Bearer first", "x-inferd-workflow": "wf"}
    assert metadata_dict(None) == {} and metadata_dict(()) == {}


def test_raw_headers_are_latin1_pairs_in_order() -> None:
    headers = {"x-request-id": "r-1", "x-inferd-cost": "0.000100", "x-note": "café"}
    assert raw_headers(headers) == [
        (b"x-request-id", b"r-1"),
        (b"x-inferd-cost", b"0.000100"),
        (b"x-note", b"caf\xe9"),
    ]


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (123, "0.000123"),
        (999_999, "0.999999"),
        (1_000_000, "1.000000"),
        (1_234_567, "1.234567"),
        (123_456_789_012, "123456.789012"),
    ],
)
def test_decimal_micros_is_exact(micros: int, text: str) -> None:
    assert decimal_micros(micros) == text
    assert float(text) == pytest.approx(micros / 1_000_000)
