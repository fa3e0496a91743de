"""Request ids: the caller's plain id is kept; new ids are unique within and across processes."""

from __future__ import annotations

import re
import subprocess
import sys

from gateway.exchange import RequestIds

_SHAPE = re.compile(r"[0-9a-f]{32}")


def test_new_ids_are_32_hex_digits_and_never_repeat() -> None:
    """Within one process the counter makes every id distinct (no birthday odds involved)."""
    ids = RequestIds()
    seen = [ids.new() for _ in range(100_000)]
    assert len(set(seen)) == len(seen)
    assert all(_SHAPE.fullmatch(request_id) for request_id in seen)


def test_each_gateway_draws_its_own_prefix() -> None:
    """Two id sources (two replicas, or a restart) never hand out the same ids."""
    first, second = RequestIds(), RequestIds()
    assert {first.new() for _ in range(1000)}.isdisjoint({second.new() for _ in range(1000)})


def test_ids_of_separate_processes_differ() -> None:
    """A restarted process starts its counter again, but under a new random prefix."""
    script = "from gateway.exchange import RequestIds; print(RequestIds().new())"
    runs = {
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(runs) == 3
    assert all(_SHAPE.fullmatch(request_id) for request_id in runs)


def test_a_plain_caller_id_is_kept_and_anything_else_replaced() -> None:
    """Only ``[A-Za-z0-9._:-]{1,128}`` is reused: nothing that could forge a log line."""
    ids = RequestIds()
    assert ids.for_request("abc-123.x:y_z") == "abc-123.x:y_z"
    for hostile in (None, "", "a b", 'a"b', "a\nb", "x" * 129, "é", "a\x00"):
        replaced = ids.for_request(hostile)
        assert _SHAPE.fullmatch(replaced), hostile
