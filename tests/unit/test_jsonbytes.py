"""The whole-body byte checks give the answers of the plain, slower ways of asking."""

from __future__ import annotations

import random

import pytest

from schema.jsonbytes import first_invalid_utf8, has_nul_escape


def _decode_error_at(data: bytes) -> int | None:
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return exc.start
    return None


# Valid characters of 1 to 4 bytes, and byte runs that are not UTF-8: a stray
# continuation byte, a cut-off sequence, an overlong form, an encoded surrogate,
# a code point past U+10FFFF, bytes that never occur.
_GOOD = ["a", "\n", "é", "€", "日", "😀", '\\"']
_BAD = [b"\x80", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xfe", b"\xf0\x9f"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 2048])
def test_first_invalid_utf8_agrees_with_decode(chunk: int) -> None:
    rng = random.Random(chunk)
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.05:
                parts.append(rng.choice(_BAD))
            else:
                parts.append((rng.choice(_GOOD) * rng.randint(1, 30)).encode())
        data = b"".join(parts)
        assert first_invalid_utf8(data, chunk) == _decode_error_at(data), data


def test_a_character_cut_by_every_slice_boundary_is_still_valid() -> None:
    data = ("x" + "é€😀" * 1200).encode()  # 2-, 3- and 4-byte characters across 4 KB slices
    assert first_invalid_utf8(data) is None
    assert first_invalid_utf8(data[:-1]) == len(data) - 4 == _decode_error_at(data[:-1])  # the last emoji cut short


def test_first_invalid_utf8_points_at_the_bad_byte_in_a_long_ascii_body() -> None:
    data = b'{"a":"' + b"x" * 10_000 + b"\xff" + b"y" * 10_000 + b'"}'
    assert first_invalid_utf8(data) == 6 + 10_000
    assert first_invalid_utf8(b"") is None


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b'{"a":"\\u0000"}', True),
        (b'{"a":"x\\u0000y"}' + b"0" * 5000, True),
        (b"\\u0000", True),
        (b'{"a":"\\\\u0000"}', True),  # an escaped backslash then "u0000": a false alarm the precise walk clears
        (b'{"a":"\\u00000"}', True),
        (b'{"a":"\\u0001", "b": 10000}', False),
        (b'{"a":"u0000 \\u000"}', False),
        (b"", False),
    ],
)
def test_has_nul_escape(data: bytes, found: bool) -> None:
    assert has_nul_escape(data) is found
    assert has_nul_escape(data) is (b"\\u0000" in data)
