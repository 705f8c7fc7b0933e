"""bench.api_parts compares like with like: the envelope-only check sees the records the api accepts."""

from __future__ import annotations

import pytest

from bench import api_parts
from bench.gen import PushStream, make_templates
from schema.envelope import split_records
from schema.validation import validate_push


@pytest.mark.parametrize("size", [100, 500])
def test_envelope_only_check_splits_every_record_the_api_accepts(size: int) -> None:
    stream = PushStream(make_templates(size), phase=1)
    for n in range(5):
        push = stream.fresh_push(n)
        validated = validate_push(push.body)
        assert not validated.rejected, "the bench's pushes are valid"
        split = {name: len(raws) for name, raws in split_records(push.body).items() if raws}
        assert split == validated.accepted_counts
        assert sum(split.values()) == push.records


def test_prints_every_part_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    api_parts.main(["--sizes", "100", "--pushes", "2"])
    out = capsys.readouterr().out
    assert out.startswith("100-record pushes")
    for name in api_parts.parts():
        line = next(line for line in out.splitlines() if line.startswith(f"  {name}"))
        us_per_push, us_per_record = line.removeprefix(f"  {name}").split()
        assert float(us_per_push) > 0 and float(us_per_record.strip("()")) > 0
