"""The structural scanner (schema/scan.py): record spans, chunk boundaries, depth, malformed JSON."""

from __future__ import annotations

import json
import random
import time

import msgspec
import pytest

from bench.samples import one_of_each, prompt, session
from schema import envelope, scan
from schema.records import RECORD_TYPES
from schema.scan import PushScanner, Record, ScanError, nesting_depth, scan_chunks


def spans(body: bytes) -> list[tuple[str, str, int, bytes]]:
    return [(r.section, r.record_type, r.index, body[r.start : r.end]) for r in PushScanner().scan(body)]


def tricky_body() -> bytes:
    """Both sections, misplaced and unknown values, and strings full of brackets, quotes and escapes."""
    awkward = prompt(7, prompt_text='a "quoted" ]}{[ \\ back\\\\slash \u00e9\U0001f600 \n\t end\\')
    return json.dumps(
        {
            "push_id": "p-1",
            "x_unknown": {"a": [1, {"b": ']}\\"[', "c": [[], {}]}], "s": "{"},
            "content_hashes": {"prompt:1": "ab" * 32},
            "data": {"sessions": [session(1)], "prompts": [awkward, prompt(2)], "future_type": [{"x": "]"}]},
            "canonical": {"prompts": [prompt(3), "a string", 5, None, [1, [2]]], "sessions": []},
            "pushed_at": "2026-01-01T00:00:00Z",
            "cli_version": "0.2.32",
        },
        ensure_ascii=False,
    ).encode()


def test_each_record_span_is_the_record_as_sent() -> None:
    body = tricky_body()
    got = spans(body)
    assert [(s, t, i) for s, t, i, _ in got] == [
        ("data", "sessions", 0),
        ("data", "prompts", 0),
        ("data", "prompts", 1),
        *[("canonical", "prompts", i) for i in range(5)],
    ]
    tree = json.loads(body)
    expected = [*tree["data"]["sessions"], *tree["data"]["prompts"], *tree["canonical"]["prompts"]]
    assert [json.loads(raw) for *_, raw in got] == expected
    assert got[1][3].startswith(b"{") and got[1][3].endswith(b"}")  # no whitespace around a span


def test_envelope_fields_and_skeleton() -> None:
    scanner = PushScanner()
    scanner.scan(tricky_body())
    assert scanner.fields == {"push_id": b'"p-1"', "pushed_at": b'"2026-01-01T00:00:00Z"', "cli_version": b'"0.2.32"'}
    assert scanner.counts == {"sessions": 1, "prompts": 7}
    decoded = msgspec.json.decode(scanner.skeleton())
    assert decoded == {
        "push_id": "p-1",
        "pushed_at": "2026-01-01T00:00:00Z",
        "cli_version": "0.2.32",
        "data": {"sessions": [], "prompts": []},
        "canonical": {"prompts": [], "sessions": []},
    }


@pytest.mark.parametrize(
    ("body", "skeleton"),
    [
        (b"[1, 2]", []),
        (b'"text"', ""),
        (b'{"data": [1], "canonical": null}', {"data": [], "canonical": None}),
        (b'{"data": {"sessions": {"a": 1}, "prompts": "x"}}', {"data": {"sessions": {}, "prompts": ""}}),
        (
            b'{"push_id": [[[1]]], "pushed_at": 5, "cli_version": null}',
            {"push_id": [], "pushed_at": 5, "cli_version": None},
        ),
    ],
)
def test_misplaced_values_stand_in_as_empty_ones_of_their_kind(body: bytes, skeleton: object) -> None:
    scanner = PushScanner()
    assert scanner.scan(body) == []
    assert msgspec.json.decode(scanner.skeleton()) == skeleton


def test_the_scanner_knows_the_envelope_the_decoder_knows() -> None:
    assert set(scan.RECORD_ARRAYS) == set(RECORD_TYPES)
    assert set(scan.ENVELOPE_FIELDS) == {f.name for f in msgspec.structs.fields(envelope.PushEnvelope)} - {
        "data",
        "canonical",
    }


def test_chunk_boundaries_anywhere_give_the_same_result() -> None:
    body = tricky_body()
    whole = PushScanner(keep_records=True)
    expected = [(r.section, r.record_type, r.index, r.start, r.end, r.raw) for r in whole.scan(body)]
    assert all(r[-1] is None for r in expected)  # scan() never copies records
    expected = [(*r[:-1], body[r[3] : r[4]]) for r in expected]
    rng = random.Random(7)
    cuttings = [[body[i : i + 1] for i in range(len(body))]]  # byte by byte
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        cuttings.append([body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)])
    for chunks in cuttings:
        scanner, records = scan_chunks(chunks)
        assert [(r.section, r.record_type, r.index, r.start, r.end, r.raw) for r in records] == expected
        assert scanner.skeleton() == whole.skeleton() and scanner.counts == whole.counts


def test_records_over_the_size_limit_are_reported_without_their_bytes() -> None:
    big = prompt(1, text_size=5000)
    body = json.dumps({"data": {"prompts": [prompt(0), big, prompt(2)]}}).encode()
    for size in (1, 100, 1 << 20):
        _, records = scan_chunks([body[i : i + size] for i in range(0, len(body), size)], max_record_bytes=4000)
        assert [r.raw is None for r in records] == [False, True, False]
        assert records[1].size == len(json.dumps(big)) and records[2].raw == json.dumps(prompt(2)).encode()


def test_memory_held_while_feeding_stays_within_a_chunk_and_a_kept_record() -> None:
    # A 4 MB string in a record the scanner does not keep: its buffer never holds more than a chunk or so.
    body = json.dumps({"data": {"prompts": [prompt(1, text_size=4_000_000), prompt(2)]}}).encode()
    scanner = PushScanner(keep_records=True, max_record_bytes=100_000)
    held = 0
    records: list[Record] = []
    for i in range(0, len(body), 65536):
        records += scanner.feed(body[i : i + 65536])
        held = max(held, len(scanner._buf))
    records += scanner.finish()
    assert held <= 65536 + 8 and [r.raw is None for r in records] == [True, False]


@pytest.mark.parametrize("kinds", ["[", "{", "[{"])
def test_nesting_100k_levels_deep_is_one_record_found_fast(kinds: str) -> None:
    depth = 100_000
    opens = "".join('{"k":' if kinds[i % len(kinds)] == "{" else "[" for i in range(depth))
    closes = "".join("}" if kinds[i % len(kinds)] == "{" else "]" for i in reversed(range(depth)))
    deep = (opens + "0" + closes).encode()
    body = b'{"canonical": {"prompts": [' + json.dumps(prompt(1)).encode() + b"," + deep + b", {}]}}"
    started = time.perf_counter()
    got = spans(body)
    assert time.perf_counter() - started < 5  # a bound against a quadratic walk, not a benchmark
    assert [raw for *_, raw in got][1] == deep and len(got) == 3
    _, chunked = scan_chunks([body[i : i + 4093] for i in range(0, len(body), 4093)])
    assert [r.raw for r in chunked][1] == deep
    assert nesting_depth(body) == depth + 3


def test_deeper_than_the_tracked_depth_is_counted_not_stored() -> None:
    depth = scan.TRACKED_DEPTH + 10
    body = b'{"data": {"prompts": [' + b"[" * depth + b"]" * depth + b"]}}"
    _, records = scan_chunks([body[i : i + 1000] for i in range(0, len(body), 1000)])
    assert [r.size for r in records] == [2 * depth]
    with pytest.raises(ScanError, match="does not match"):
        PushScanner().scan(b'{"data": {"prompts": [[{]]}}')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "truncated (byte 0)"),
        (b'{"data": {"prompts": [{"a": 1}', "truncated"),
        (b'{"data": {"prompts": [{"a": "unclosed', "truncated inside a string"),
        (b'{"data": {"prompts": [[[[', "truncated inside a value"),
        (b'{"a": 1,}', "expected '\"' (an object key) (byte 8)"),
        (b'{"a" 1}', "expected ':' (byte 5)"),
        (b'{"a": 1 "b": 2}', "expected ',' or '}' (byte 8)"),
        (b'{"data": {"prompts": [{"a": [}]}}', "a closing bracket does not match its opening one (byte 29)"),
        (b"{} x", "trailing characters after the top-level value (byte 3)"),
        (b'{"a": tru}', "invalid character (byte 6)"),
        (b'{"a": 01}', "invalid character (byte 6)"),
        (b'{"a": "\\x"}', "invalid character or escape in a string (byte 7)"),
        (b'{"a": "tab\there"}', "invalid character or escape in a string"),
    ],
)
def test_malformed_or_cut_json_is_a_clear_error_whatever_the_chunks(body: bytes, message: str) -> None:
    with pytest.raises(ScanError, match=r"^JSON is malformed: ") as whole:
        PushScanner().scan(body)
    assert message in str(whole.value)
    with pytest.raises(ScanError) as chunked:
        scan_chunks([body[i : i + 1] for i in range(len(body))])
    assert str(chunked.value) == str(whole.value)


def test_an_escape_or_number_cut_by_a_chunk_is_read_whole() -> None:
    body = b'{"push_id": "a\\u00e9b", "pushed_at": 12345.5e3, "data": {"prompts": [1234567]}}'
    for at in range(1, len(body)):
        scanner, records = scan_chunks([body[:at], body[at:]])
        assert scanner.fields == {"push_id": b'"a\\u00e9b"', "pushed_at": b"12345.5e3"}
        assert [r.raw for r in records] == [b"1234567"]


def test_keys_are_compared_as_decoded_strings() -> None:
    body = b'{"d\\u0061ta": {"pro\\u006dpts": [{}]}, "push_\\u0069d": "x"}'
    scanner = PushScanner()
    assert len(scanner.scan(body)) == 1 and scanner.fields == {"push_id": b'"x"'}


def test_throughput_on_a_20_mb_body_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # A check that the regex jumps, not a benchmark: 11 records and one 17 MB prompt, and 20 MB of small records.
    big = json.dumps({"data": {"prompts": [prompt(i) for i in range(11)] + [prompt(99, text_size=17_000_000)]}})
    small = json.dumps({"data": one_of_each() | {"prompts": [prompt(i) for i in range(20_000)]}})
    for name, body in (("one big string", big.encode()), ("small records", small.encode())):
        started = time.perf_counter()
        scan_chunks([body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20)], max_record_bytes=4 << 20)
        seconds = time.perf_counter() - started
        with capsys.disabled():
            print(f"\nscanner, {name}: {len(body) / 1e6:.1f} MB in {seconds * 1000:.0f} ms")
        assert seconds < 10
