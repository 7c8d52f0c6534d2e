"""The grid-signal contract (DESIGN.md): JSON schema, HMAC signing, the MQTT envelope.

Shared by the MQTT and HTTP adapters so both accept exactly the same signals and reject
the same mistakes with the same reasons.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from controller.core.signals import Cancel, Curtailment, Grant, GridSignal, Heartbeat

MAX_BODY_BYTES = 64 * 1024  # the contract's limit for HTTP bodies and MQTT payloads
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Signing times and every timestamp in a signal lie in this window: wide enough for any
# real schedule, narrow enough that no date arithmetic downstream (a deadline added to a
# start, a conversion to UTC) can overflow, and every value fits where it is stored.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_UNIX_SECONDS = re.compile(r"[0-9]{1,10}")  # a signing time as the contract writes it
MAX_REVISION = 2**31 - 1
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"


class WireError(Exception):
    """A signal was refused before it reached the book. `status` is the HTTP answer."""

    status = 400

    def __init__(
        self, reason: str, *, signal_id: str | None = None, revision: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signal_id = signal_id
        self.revision = revision


class InvalidSignalError(WireError):
    status = 400


class BadSignatureError(WireError):
    status = 401


class TooLargeError(WireError):
    status = 413


SIGNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"  # an uploaded schedule's ids too
MAX_SIGNAL_ID = 128
# Uploaded auction grants are held as `auction:<reference>` (intake/schedule.py): the grid
# may cancel one by that id, but no grid curtailment or grant may take one, so an
# operator's upload can never shadow what the grid says.
AUCTION = "auction:"
SignalId = Annotated[str, Field(min_length=1, max_length=MAX_SIGNAL_ID, pattern=SIGNAL_ID_PATTERN)]
Revision = Annotated[int, Field(ge=1, le=MAX_REVISION)]
Kilowatts = Annotated[float, Field(ge=0, le=10_000_000, allow_inf_nan=False)]


def _within_range(value: datetime) -> datetime:
    # Judged on the wall-clock fields before any conversion: year 1 at +05:00 cannot even
    # be converted to UTC.
    naive = value.replace(tzinfo=None)
    if not EARLIEST.replace(tzinfo=None) <= naive < LATEST.replace(tzinfo=None):
        raise ValueError(f"timestamp must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


Stamp = Annotated[AwareDatetime, AfterValidator(_within_range)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Windowed(_In):
    start: Stamp | None = None
    end: Stamp | None = None

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class CurtailmentIn(_Windowed):
    type: Literal["curtailment"]
    id: SignalId
    revision: Revision
    issued_at: Stamp
    limit_kw: Kilowatts
    deadline_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
    emergency: bool = False


class GrantIn(_Windowed):
    type: Literal["grant"]
    id: SignalId
    revision: Revision
    issued_at: Stamp
    granted_kw: Kilowatts


class CancelIn(_In):
    type: Literal["cancel"]
    id: SignalId
    revision: Revision
    issued_at: Stamp


class HeartbeatIn(_In):
    type: Literal["heartbeat"]
    issued_at: Stamp


SignalIn = Annotated[CurtailmentIn | GrantIn | CancelIn | HeartbeatIn, Field(discriminator="type")]
_SIGNAL: TypeAdapter[CurtailmentIn | GrantIn | CancelIn | HeartbeatIn] = TypeAdapter(SignalIn)


class EnvelopeIn(_In):
    ts: Annotated[int, Field(ge=0, le=int(LATEST.timestamp()))]
    sig: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    body: Annotated[str, Field(max_length=MAX_BODY_BYTES)]


def parse_signal(body: bytes) -> GridSignal:
    """Validate a signal's JSON; InvalidSignalError names every problem."""
    if len(body) > MAX_BODY_BYTES:
        raise TooLargeError(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        parsed = _SIGNAL.validate_json(body, strict=True)
    except ValidationError as err:
        ident, revision = _identify(body)
        raise InvalidSignalError(describe(err), signal_id=ident, revision=revision) from None
    if not isinstance(parsed, CancelIn | HeartbeatIn) and parsed.id.startswith(AUCTION):
        raise InvalidSignalError(
            f"id: the prefix {AUCTION!r} is reserved for uploaded auction grants "
            f"(a cancel may name one)",
            signal_id=parsed.id,
            revision=parsed.revision,
        )
    return _to_core(parsed)


def sign(key: bytes, ts: int, body: bytes) -> str:
    """The contract's signature: hex HMAC-SHA256 over f"{ts}.{raw_body}"."""
    return hmac.new(key, str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()


def authenticate(
    keys: Mapping[str, bytes],
    ts: int | str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    window_s: float,
) -> str:
    """The id of the source whose key signed `body`; BadSignatureError otherwise."""
    if ts is None or ts == "":
        raise BadSignatureError(f"missing {TIMESTAMP_HEADER}")
    if not signature:
        raise BadSignatureError(f"missing {SIGNATURE_HEADER}")
    if not _HEX64.fullmatch(signature):
        raise BadSignatureError("signature must be 64 hex digits (HMAC-SHA256)")
    # Digits only: int() would also take "+12", " 12" or "1_2", and a number of any size.
    if isinstance(ts, str) and not _UNIX_SECONDS.fullmatch(ts):
        raise BadSignatureError("signature timestamp is not unix seconds (1 to 10 digits)")
    stamp = int(ts)
    if not 0 <= stamp <= LATEST.timestamp():
        raise BadSignatureError(f"signature timestamp is not before {LATEST:%Y-%m-%d}")
    source = next(
        (
            name
            for name, key in keys.items()
            if hmac.compare_digest(sign(key, stamp, body), signature.lower())
        ),
        None,
    )
    if source is None:
        raise BadSignatureError("signature does not match any configured source key")
    skew = now - stamp
    if not math.isfinite(skew) or abs(skew) > window_s:
        raise BadSignatureError(
            f"signature timestamp is {skew:+.0f} s from our clock; "
            f"the replay window is {window_s:g} s"
        )
    return source


def open_envelope(
    payload: bytes, keys: Mapping[str, bytes], *, now: float, window_s: float
) -> tuple[str, bytes]:
    """Check an MQTT envelope; return (source id, raw signal body)."""
    if len(payload) > MAX_BODY_BYTES:
        raise TooLargeError(f"payload is {len(payload)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        envelope = EnvelopeIn.model_validate_json(payload, strict=True)
    except ValidationError as err:
        raise InvalidSignalError(f"envelope: {describe(err)}") from None
    body = envelope.body.encode()
    source = authenticate(keys, envelope.ts, envelope.sig, body, now=now, window_s=window_s)
    return source, body


def seal(key: bytes, ts: int, body: bytes) -> bytes:
    """An MQTT envelope for `body` (used by the demo's grid operator and by tests)."""
    return json.dumps({"ts": ts, "sig": sign(key, ts, body), "body": body.decode()}).encode()


def describe(err: ValidationError) -> str:
    """pydantic errors as '; '-joined 'field: problem' pairs."""
    parts = []
    for e in err.errors():
        loc = [p for p in e["loc"] if p not in ("curtailment", "grant", "cancel", "heartbeat")]
        where = ".".join(str(p) for p in loc) or "body"
        message = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        elif e["type"] == "timezone_aware":
            message = "timestamp needs a UTC offset, e.g. 2026-11-22T10:00:00Z"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _identify(body: bytes) -> tuple[str | None, int | None]:
    """Best-effort id and revision of a rejected signal, so its ack can name it: only
    values the contract allows, since they are journaled and published as they are.
    pydantic's parser bounds nesting depth; the standard library's would recurse."""
    try:
        data: Any = pydantic_core.from_json(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    ident = data.get("id")
    revision = data.get("revision")
    return (
        ident if isinstance(ident, str) and _ID.fullmatch(ident) else None,
        revision if type(revision) is int and 1 <= revision <= MAX_REVISION else None,
    )


def _watts(kw: float) -> int:
    return math.floor(kw * 1000 + 1e-6)  # never round a limit up


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _to_core(parsed: CurtailmentIn | GrantIn | CancelIn | HeartbeatIn) -> GridSignal:
    if isinstance(parsed, CurtailmentIn):
        return Curtailment(
            parsed.id,
            parsed.revision,
            parsed.issued_at.astimezone(UTC),
            _watts(parsed.limit_kw),
            parsed.deadline_s,
            _utc(parsed.start),
            _utc(parsed.end),
            parsed.emergency,
        )
    if isinstance(parsed, GrantIn):
        return Grant(
            parsed.id,
            parsed.revision,
            parsed.issued_at.astimezone(UTC),
            _watts(parsed.granted_kw),
            _utc(parsed.start),
            _utc(parsed.end),
        )
    if isinstance(parsed, CancelIn):
        return Cancel(parsed.id, parsed.revision, parsed.issued_at.astimezone(UTC))
    return Heartbeat(parsed.issued_at.astimezone(UTC))
