"""The state file: atomic, private, read back without what expired, hostile files ignored;
the ledger rebuilt from its snapshot."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gateway.fleet.ledger_state import ledger_from_snapshot
from gateway.fleet.namespace import gateway_identity
from gateway.fleet.snapshot import (
    FORMAT,
    MAX_BYTES,
    BreakerRecord,
    Snapshot,
    StateFile,
    encode,
    read_snapshot,
    write_snapshot,
)
from gateway.ledger import Answer, Ledger, LedgerPolicy

ME = gateway_identity("production", "partner-client")
NOW = 1_780_000_000.0


def snapshot(*breakers: BreakerRecord, ledger: dict[str, object] | None = None) -> Snapshot:
    return Snapshot(ME, NOW, breakers, ledger)


def ignored(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.fields["reason"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "state_file_ignored"
    ]


def test_identity_hides_the_client_id() -> None:
    """The identity names the environment and a hash; never the client id."""
    assert ME.startswith("production:")
    assert "partner-client" not in ME
    assert gateway_identity("qa", "partner-client") != ME
    assert gateway_identity("production", "other") != ME


def test_round_trip_drops_what_expired(tmp_path: Path) -> None:
    """Written with mode 0600, read back: open breakers still open and recent half-open
    ones come back; an open breaker whose time passed does not."""
    path = tmp_path / "state.json"
    still_open = BreakerRecord("UKOFFLINE1", "open", NOW + 120, 2, "503")
    over = BreakerRecord("UKOLD1", "open", NOW - 1, 0, "504")
    probing = BreakerRecord("UKFLAKY1", "half_open", NOW - 5, 1, "503")
    write_snapshot(path, snapshot(still_open, over, probing))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temporary file left"
    restored = read_snapshot(path, gateway=ME, now=NOW + 10)
    assert restored is not None
    assert restored.breakers == (still_open, probing)
    later = read_snapshot(path, gateway=ME, now=NOW + 400)
    assert later is not None
    assert later.breakers == ()


def test_write_replaces_atomically(tmp_path: Path) -> None:
    """A second write replaces the first; a write into a missing directory raises OSError
    and leaves no temporary file."""
    path = tmp_path / "state.json"
    write_snapshot(path, snapshot(BreakerRecord("A1", "open", NOW + 1, 0, None)))
    write_snapshot(path, snapshot())
    assert json.loads(path.read_bytes())["breakers"] == []
    with pytest.raises(FileNotFoundError):
        write_snapshot(tmp_path / "gone" / "state.json", snapshot())


def test_missing_file_is_a_first_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No file: nothing restored and nothing logged."""
    assert read_snapshot(tmp_path / "none.json", gateway=ME, now=NOW) is None
    assert ignored(caplog) == []


def hostile_documents() -> dict[str, bytes]:
    good = json.loads(encode(snapshot(BreakerRecord("UKX1", "open", NOW + 60, 0, "503"))))

    def variant(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    def breaker(**changes: object) -> bytes:
        return variant(breakers=[{**good["breakers"][0], **changes}])

    return {
        "empty": b"",
        "truncated": encode(snapshot())[:-7],
        "not json": b"\x00\xff binary",
        "array": b"[]",
        "deep": b"[" * 200_000 + b"]" * 200_000,
        "foreign partner": variant(gateway=gateway_identity("production", "another")),
        "foreign environment": variant(gateway=gateway_identity("qa", "partner-client")),
        "future format": variant(format="exact-gateway-state/2"),
        "no identity": variant(gateway="production:partner-client"),
        "NaN": encode(snapshot()).replace(b'"written_at":1780000000.0', b'"written_at":NaN'),
        "duplicate keys": b'{"format":"x","format":"' + FORMAT.encode() + b'"}',
        "path as practice": breaker(practice_id="../../etc"),
        "unknown state": breaker(state="closed"),
        "bool reopenings": breaker(reopenings=True),
        "huge reopenings": breaker(reopenings=10**9),
        "string time": breaker(open_until="tomorrow"),
        "long cause": breaker(cause="x" * 1000),
        "extra field": breaker(token="eyJ"),
        "ledger not object": variant(ledger=[1, 2]),
        "breakers not list": variant(breakers={"a": 1}),
    }


@pytest.mark.parametrize("name", list(hostile_documents()))
def test_hostile_files_are_ignored(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each broken or foreign file: one log line with a reason, nothing restored, no raise."""
    path = tmp_path / "state.json"
    path.write_bytes(hostile_documents()[name])
    assert read_snapshot(path, gateway=ME, now=NOW) is None
    reasons = ignored(caplog)
    assert len(reasons) == 1
    assert "eyJ" not in reasons[0]


def test_oversized_fifo_and_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file over 8 MiB, a FIFO (which would block a plain open), a directory: each one
    line, ignored, and the start goes on."""
    big = tmp_path / "big.json"
    with big.open("wb") as handle:
        handle.truncate(MAX_BYTES + 1)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.json"
    directory.mkdir()
    for path in (big, fifo, directory):
        assert read_snapshot(path, gateway=ME, now=NOW) is None
    assert len(ignored(caplog)) == 3


async def test_state_file_saves_and_reports_failures_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """save() writes what collect() returns; a directory that vanished is one line however
    many saves fail, and one line when writing works again."""
    path = tmp_path / "sub" / "state.json"
    keeper = StateFile(path, interval=5, collect=snapshot)
    assert not await keeper.save()
    assert not await keeper.save()
    path.parent.mkdir()
    assert await keeper.save()
    assert read_snapshot(path, gateway=ME, now=NOW) == snapshot()
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.fleet.snapshot"]
    assert messages == ["state_file_write_failed", "state_file_writable"]


def busy_ledger(now: list[float]) -> Ledger:
    ledger = Ledger(LedgerPolicy(max_entries=10), clock=lambda: now[0])
    ledger.set_subscriptions(["UKTEST1", "UKOFFLINE1", "UKPAUSED1"])
    ledger.record_attempt("UKTEST1", Answer.OK, 0.2)
    ledger.set_version("UKTEST1", "13.856")
    now[0] += 3600
    ledger.record_attempt("UKTEST1", Answer.CLIENT_ERROR, 0.3)
    for _ in range(5):
        ledger.record_attempt("UKOFFLINE1", Answer.UNAVAILABLE)
    ledger.breaker_opened("UKOFFLINE1", "503")
    ledger.record_attempt("UKSEEN1", Answer.OK, 6.0)
    ledger.pause_started("UKPAUSED1", now[0] + 600, "server move")
    return ledger


def test_ledger_round_trip() -> None:
    """A ledger rebuilt from its snapshot shows the same practices, counts and periods;
    the offline practice stays unavailable when its breaker was restored."""
    now = [NOW]
    ledger = busy_ledger(now)
    view = json.loads(json.dumps(ledger.snapshot(hourly=True)))
    restored = ledger_from_snapshot(
        view, ledger.policy, clock=lambda: now[0], open_practices={"ukoffline1"}
    )
    before, after = ledger.snapshot(hourly=True), restored.snapshot(hourly=True)
    paused_after = next(p for p in after["practices"] if p["practice_id"] == "UKPAUSED1")
    # The pause comes back from the pause file, not from here: its period ends at the save.
    assert paused_after["pause"] is None
    assert paused_after["unavailable_periods"][0]["end"] == before["generated_at"]
    for view_before, view_after in zip(before["practices"], after["practices"], strict=True):
        if view_before["practice_id"] == "UKPAUSED1":
            continue
        assert view_after == view_before
    assert restored.get("UKOFFLINE1")["state"] == "unavailable"  # type: ignore[index]


def test_ledger_without_the_breaker_ends_the_period() -> None:
    """An outage whose breaker did not come back (it expired) is over in the ledger too."""
    now = [NOW]
    view = json.loads(json.dumps(busy_ledger(now).snapshot(hourly=True)))
    restored = ledger_from_snapshot(view, LedgerPolicy(max_entries=10), clock=lambda: now[0])
    offline = restored.get("UKOFFLINE1")
    assert offline is not None
    assert offline["state"] != "unavailable"
    assert offline["unavailable_periods"][0]["end"] is not None


@pytest.mark.parametrize(
    "damage",
    [
        lambda v: v["practices"][0].update(practice_id="../x"),
        lambda v: v["practices"][0].update(state="haunted"),
        lambda v: v["practices"][0]["hourly"][0].update({"2xx": -1}),
        lambda v: v["practices"][0]["hourly"][0].update({"2xx": "many"}),
        lambda v: v["practices"][0].update(since="yesterday"),
        lambda v: v["practices"][0].pop("hourly"),
        lambda v: v.update(practices="all"),
        lambda v: v["practices"][0].update(last_failure_kind="<script>"),
    ],
)
def test_damaged_ledger_views_are_refused(damage: object) -> None:
    """Any field the ledger would not write makes the whole view ValueError."""
    now = [NOW]
    view = json.loads(json.dumps(busy_ledger(now).snapshot(hourly=True)))
    damage(view)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"."):
        ledger_from_snapshot(view, LedgerPolicy(max_entries=10), clock=lambda: now[0])
