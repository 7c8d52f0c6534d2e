"""The signal contract: schema, HMAC over ts.body, replay window, MQTT envelope."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.core.signals import Cancel, Curtailment, Grant, Heartbeat
from controller.intake import wire

KEYS = {"kegoc": b"k1", "aggregator": b"k2"}
NOW = 1_795_000_000.0

CURTAILMENT = {
    "type": "curtailment",
    "id": "evt-0017",
    "revision": 1,
    "issued_at": "2026-11-22T10:00:00Z",
    "start": "2026-11-22T10:00:00Z",
    "end": "2026-11-22T11:00:00Z",
    "limit_kw": 1200.0,
    "deadline_s": 10,
    "emergency": False,
}


def body(**changes: Any) -> bytes:
    data = {**CURTAILMENT, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_wire_parses_every_signal_type() -> None:
    assert isinstance(wire.parse_signal(body()), Curtailment)
    grant = wire.parse_signal(
        json.dumps(
            {
                "type": "grant",
                "id": "korem-2026-11-23-h10",
                "revision": 1,
                "issued_at": "2026-11-23T09:00:00+05:00",
                "start": "2026-11-23T10:00:00+05:00",
                "end": "2026-11-23T11:00:00+05:00",
                "granted_kw": 5000.0,
            }
        ).encode()
    )
    assert isinstance(grant, Grant)
    assert grant.granted_w == 5_000_000
    assert grant.start is not None
    assert grant.start.isoformat() == "2026-11-23T05:00:00+00:00"
    cancel = wire.parse_signal(
        b'{"type":"cancel","id":"evt-0017","revision":2,"issued_at":"2026-11-22T10:05:00Z"}'
    )
    assert isinstance(cancel, Cancel)
    assert isinstance(
        wire.parse_signal(b'{"type":"heartbeat","issued_at":"2026-11-22T10:05:00Z"}'), Heartbeat
    )


def test_wire_kilowatts_round_down_to_watts() -> None:
    signal = wire.parse_signal(body(limit_kw=0.0019))
    assert isinstance(signal, Curtailment)
    assert signal.limit_w == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": "curtail"}, "does not match any of the expected tags"),
        ({"limit_kw": "1200"}, "limit_kw: Input should be a valid number"),
        ({"revision": "1"}, "revision: Input should be a valid integer"),
        ({"revision": True}, "revision: Input should be a valid integer"),
        ({"limit_kw": ...}, "limit_kw: Field required"),
        ({"deadline_s": ...}, "deadline_s: Field required"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"end": "2026-11-22T09:00:00Z"}, "end must be after start"),
        ({"limit_kw": -5}, "limit_kw: Input should be greater than or equal to 0"),
        ({"issued_at": "2026-11-22T10:00:00"}, "issued_at: timestamp needs a UTC offset"),
        ({"start": "2026-11-22 10:00"}, "start: timestamp needs a UTC offset"),
        ({"deadline_s": 0}, "deadline_s: Input should be greater than 0"),
        ({"id": ""}, "id: String should have at least 1 character"),
        ({"limit_kw": float("nan")}, "limit_kw"),
    ],
)
def test_wire_rejects_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(wire.InvalidSignalError) as err:
        wire.parse_signal(body(**changes))
    assert reason in err.value.reason
    assert err.value.status == 400


def test_wire_rejected_signal_still_names_its_id_when_it_can() -> None:
    with pytest.raises(wire.InvalidSignalError) as err:
        wire.parse_signal(body(limit_kw=-1))
    assert (err.value.signal_id, err.value.revision) == ("evt-0017", 1)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'"x"', b"{"])
def test_wire_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(wire.InvalidSignalError):
        wire.parse_signal(raw)


def test_wire_rejects_oversized_body() -> None:
    with pytest.raises(wire.TooLargeError) as err:
        wire.parse_signal(b" " * (wire.MAX_BODY_BYTES + 1))
    assert err.value.status == 413


def test_wire_authenticate_names_the_source_whose_key_signed() -> None:
    raw = body()
    ts = int(NOW)
    assert (
        wire.authenticate(KEYS, str(ts), wire.sign(b"k2", ts, raw), raw, now=NOW, window_s=30)
        == "aggregator"
    )
    assert wire.sign(b"k1", ts, raw) == wire.sign(b"k1", ts, raw)


@pytest.mark.parametrize(
    ("ts", "sig", "reason"),
    [
        (None, "ab" * 32, "missing X-Signature-Timestamp"),
        ("1795000000", None, "missing X-Signature"),
        ("soon", "ab" * 32, "not unix seconds"),
        ("1795000000", "ab" * 32, "does not match any configured source key"),
    ],
)
def test_wire_authenticate_rejects(ts: str | None, sig: str | None, reason: str) -> None:
    with pytest.raises(wire.BadSignatureError) as err:
        wire.authenticate(KEYS, ts, sig, body(), now=NOW, window_s=30)
    assert reason in err.value.reason
    assert err.value.status == 401


@pytest.mark.parametrize("skew", [-31, 31, 3600])
def test_wire_replay_window(skew: int) -> None:
    raw = body()
    ts = int(NOW) - skew
    with pytest.raises(wire.BadSignatureError) as err:
        wire.authenticate(KEYS, str(ts), wire.sign(b"k1", ts, raw), raw, now=NOW, window_s=30)
    assert "replay window is 30 s" in err.value.reason
    ok = int(NOW) - 29
    wire.authenticate(KEYS, str(ok), wire.sign(b"k1", ok, raw), raw, now=NOW, window_s=30)


def test_wire_signature_covers_the_body() -> None:
    raw = body()
    ts = int(NOW)
    sig = wire.sign(b"k1", ts, raw)
    with pytest.raises(wire.BadSignatureError):
        wire.authenticate(KEYS, str(ts), sig, body(limit_kw=5000), now=NOW, window_s=30)
    with pytest.raises(wire.BadSignatureError):
        wire.authenticate(KEYS, str(ts + 1), sig, raw, now=NOW, window_s=30)


def test_wire_envelope_round_trip_and_rejections() -> None:
    raw = body()
    sealed = wire.seal(b"k1", int(NOW), raw)
    assert wire.open_envelope(sealed, KEYS, now=NOW, window_s=30) == ("kegoc", raw)
    extra = json.dumps({**json.loads(sealed), "src": "kegoc"}).encode()
    with pytest.raises(wire.InvalidSignalError, match="src: unknown field"):
        wire.open_envelope(extra, KEYS, now=NOW, window_s=30)
    as_object = json.dumps({**json.loads(sealed), "body": CURTAILMENT}).encode()
    with pytest.raises(wire.InvalidSignalError, match="body: Input should be a valid string"):
        wire.open_envelope(as_object, KEYS, now=NOW, window_s=30)
    with pytest.raises(wire.BadSignatureError):
        wire.open_envelope(wire.seal(b"wrong", int(NOW), raw), KEYS, now=NOW, window_s=30)


def test_wire_signature_must_be_hex() -> None:
    for bad in ("\u00e9" * 64, "zz" * 32, "ab" * 31):
        with pytest.raises(wire.BadSignatureError, match="64 hex digits"):
            wire.authenticate(KEYS, str(int(NOW)), bad, body(), now=NOW, window_s=30)


# -- hostile inputs signed with the right key (an outside round stopped the daemon) ----------


def _signed_envelope(raw: bytes, ts: int) -> bytes:
    return json.dumps({"ts": ts, "sig": wire.sign(b"k1", ts, raw), "body": raw.decode()}).encode()


def test_wire_huge_signing_time_is_refused_not_an_overflow() -> None:
    raw = body()
    for ts in (10**400, 2**63, 5_000_000_000):
        with pytest.raises(wire.WireError) as err:
            wire.open_envelope(_signed_envelope(raw, ts), KEYS, now=NOW, window_s=30)
        assert "ts" in err.value.reason or "2100" in err.value.reason
    header = "9" * 400
    with pytest.raises(wire.BadSignatureError, match="not unix seconds"):
        wire.authenticate(KEYS, header, wire.sign(b"k1", 0, raw), raw, now=NOW, window_s=30)


@pytest.mark.parametrize("ts", ["+1795000000", " 1795000000", "1_795_000_000", "-1", "1e9"])
def test_wire_signing_time_is_digits_only(ts: str) -> None:
    with pytest.raises(wire.BadSignatureError, match="not unix seconds"):
        wire.authenticate(KEYS, ts, "ab" * 32, body(), now=NOW, window_s=30)


@pytest.mark.parametrize(
    "raw",
    [b"[" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b'{"id": ' + b"[" * 3000 + b"}"],
    ids=["5000 arrays", "2000 objects", "nested id"],
)
def test_wire_deep_nesting_is_invalid_not_a_recursion_error(raw: bytes) -> None:
    with pytest.raises(wire.InvalidSignalError) as err:
        wire.parse_signal(raw)
    assert err.value.signal_id is None
    assert "recursion limit" in err.value.reason or "Invalid JSON" in err.value.reason


def test_wire_out_of_range_revision_is_not_named_in_the_refusal() -> None:
    """A rejected signal's id and revision are journaled and published: only values the
    contract allows (SQLite's INTEGER stops at 2**63 - 1)."""
    with pytest.raises(wire.InvalidSignalError) as err:
        wire.parse_signal(body(revision=9223372036854775808))
    assert (err.value.signal_id, err.value.revision) == ("evt-0017", None)
    with pytest.raises(wire.InvalidSignalError) as err:
        wire.parse_signal(body(id="x" * 5000, limit_kw=-1))
    assert err.value.signal_id is None


@pytest.mark.parametrize(
    "changes",
    [
        {"issued_at": "0001-01-01T00:00:00+05:00"},
        {"issued_at": "9999-12-31T23:59:59-05:00"},
        {"start": "9999-12-31T23:59:59Z", "end": ...},
        {"end": "2100-01-01T00:00:00Z"},
        {"start": "1999-12-31T23:59:59Z"},
    ],
)
def test_wire_timestamps_outside_the_sane_range_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(wire.InvalidSignalError, match="between 2000-01-01 and 2100-01-01"):
        wire.parse_signal(body(**changes))
