"""workers.arrays.body_arrays: each type's records of a valid body as one JSON array, as sent."""

from __future__ import annotations

import json

from workers.arrays import body_arrays


def test_each_types_records_form_one_array_data_before_canonical() -> None:
    body = (
        b'{"push_id": "p", "data": {"prompts": [ {"a": 1} ,{"a": 2}], "sessions": [ ]},'
        b' "canonical": {"prompts": [\n{"a": 3}\n], "sessions": null, "grading_results": [{"g": "]"}]},'
        b' "content_hashes": {"prompts": [9]}}'
    )
    arrays = body_arrays(body)
    assert set(arrays) == {"prompts", "grading_results"}  # empty and null arrays leave a type out
    assert json.loads(arrays["prompts"]) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert json.loads(arrays["grading_results"]) == [{"g": "]"}]
    assert b'{"a": 1}' in arrays["prompts"]  # the records' bytes as sent


def test_a_body_without_records_has_no_arrays() -> None:
    assert body_arrays(b'{"push_id": "p"}') == {}
    assert body_arrays(b'{"data": null, "canonical": {}}') == {}
