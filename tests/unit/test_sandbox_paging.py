"""Byte-budget pages and signed continuation tokens."""

from __future__ import annotations

import pytest

from gateway.sandbox.paging import ContinuationCodec, ContinuationError, take_page


def test_page_fits_the_budget_including_brackets_and_commas() -> None:
    """Items are taken while `[a,b,...]` stays within the budget."""
    items = [b"x" * 10] * 5
    page, more = take_page(iter(items), len, 2 + 10 + 1 + 10)
    assert len(page) == 2
    assert more
    page, more = take_page(iter(items), len, 1000)
    assert len(page) == 5
    assert not more


def test_page_always_holds_one_item() -> None:
    """A record bigger than the budget still goes out alone, so walking cannot stall."""
    page, more = take_page(iter([b"x" * 100, b"y"]), len, 10)
    assert page == [b"x" * 100]
    assert more


def test_empty_input_gives_empty_last_page() -> None:
    """No items: an empty page and no continuation."""
    assert take_page(iter([]), len, 10) == ([], False)


def test_token_round_trip_within_its_query() -> None:
    """A token decodes back to its cursor for the same query scope."""
    codec = ContinuationCodec(b"k" * 32)
    token = codec.encode("UKTEST1|a|b", (1714550400.0, "00004000-1200-0000-0000-008034ec7256"))
    assert codec.decode("UKTEST1|a|b", token) == (
        1714550400.0,
        "00004000-1200-0000-0000-008034ec7256",
    )


@pytest.mark.parametrize("mangle", ["other-query", "garbled", "truncated", "other-key"])
def test_foreign_or_garbled_tokens_are_refused(mangle: str) -> None:
    """Tokens from another query, another key, or damaged in transit raise."""
    codec = ContinuationCodec(b"k" * 32)
    token = codec.encode("q1", (1.0, "id"))
    scope = "q1"
    if mangle == "other-query":
        scope = "q2"
    elif mangle == "garbled":
        token = "A" + token[1:] if token[0] != "A" else "B" + token[1:]
    elif mangle == "truncated":
        token = token[: len(token) // 2]
    else:
        codec = ContinuationCodec(b"o" * 32)
    with pytest.raises(ContinuationError):
        codec.decode(scope, token)
