"""The operator's desk: limit overrides, per-miner holds and the automation switch.

Every change is journaled (who, what, why) together with the standing state it leaves, in
one transaction, before it takes effect; after a restart the desk is read back from the
journal. A change that is refused changes nothing. The desk never touches hardware: it
hands overrides to the inbox (arbitrate() takes the minimum, so they can only tighten),
holds and the automation switch to the supervisor, and nudges the loop.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from controller.core.operator import Automation, Hold, HoldMode, held
from controller.core.signals import Override
from controller.intake.inbox import Inbox
from controller.record.journal import Journal, JournalError

log = structlog.get_logger("curtaild.operator")

MAX_EXPIRY = timedelta(days=30)  # nothing an operator sets may outlive a month unseen


class Role(enum.IntEnum):
    """Each role may do everything the ones below it may."""

    VIEWER = 1  # reads
    OPERATOR = 2  # overrides, holds, pause and resume
    ADMIN = 3  # reserved for changes to the daemon itself (exports of the whole journal)

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.upper()]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a configured token's name and role."""

    name: str
    role: Role


class OperatorError(Exception):
    """A change the desk refuses; nothing held changed."""

    status = 422

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFoundError(OperatorError):
    status = 404


class LooserThanGridError(OperatorError):
    """An override above what the grid allows would never bind: grid limits win."""


class Desk:
    """Overrides, holds and the automation switch, durable in the journal."""

    def __init__(
        self,
        *,
        journal: Journal,
        inbox: Inbox,
        miners: Iterable[str],
        now: datetime,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._journal = journal
        self._inbox = inbox
        self._miners = frozenset(miners)
        self.on_change = on_change
        self.overrides: dict[str, Override] = {}
        self.created: dict[str, datetime] = {}  # override id -> when it was made
        self.holds: dict[str, Hold] = {}
        self.automation = Automation()
        self.version = 0  # bumped on every change: the supervisor re-derives what it keeps
        self._restore(journal.operator_state())
        try:
            self.expire(now)
        except JournalError:  # only loosens; the loop journals it again each cycle
            log.exception("operator expiry could not be journaled at start-up")
        self._publish()

    # -- reads -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.automation.paused

    def held(self, mode: HoldMode) -> frozenset[str]:
        return held(self.holds, mode)

    # -- changes ---------------------------------------------------------------------------

    def add_override(
        self,
        *,
        limit_w: int,
        expires_at: datetime,
        reason: str,
        by: Principal,
        now: datetime,
        grid_limit_w: int,
        grid_reasons: tuple[str, ...] = (),
    ) -> Override:
        """A tighter limit until `expires_at`. Refused when it is not below what the grid
        allows now: an override can only tighten, and grid limits always win."""
        self._check_expiry(expires_at, now)
        if limit_w > grid_limit_w:
            why = "; ".join(grid_reasons) or "the site cap"
            raise LooserThanGridError(
                f"limit_kw {limit_w / 1000:g} is above the {grid_limit_w / 1000:g} kW the grid "
                f"allows now ({why}); grid limits always win, so an override can only tighten",
                field="limit_kw",
            )
        override_id = f"ov-{secrets.token_hex(4)}"
        override = Override(override_id, limit_w, reason, by.name, expires_at)
        state = {
            "type": "override",
            "id": override_id,
            "limit_w": limit_w,
            "reason": reason,
            "by": by.name,
            "created_at": now.isoformat(),
            "expires_at": expires_at.isoformat(),
        }
        self._record(now, by, "override created", f"override:{override_id}", reason, state)
        self.overrides[override_id] = override
        self.created[override_id] = now
        self._changed("override")
        return override

    def remove_override(
        self, override_id: str, *, reason: str, by: Principal, now: datetime
    ) -> None:
        if override_id not in self.overrides:
            raise NotFoundError(f"no override {override_id!r} is in force", field="id")
        self._record(now, by, "override removed", f"override:{override_id}", reason, None)
        del self.overrides[override_id]
        self.created.pop(override_id, None)
        self._changed("override")

    def hold(
        self,
        miner_id: str,
        mode: HoldMode | None,
        *,
        expires_at: datetime | None,
        reason: str,
        by: Principal,
        now: datetime,
    ) -> Hold | None:
        """Hold a miner asleep or running until `expires_at`; mode None releases it."""
        if miner_id not in self._miners:
            raise NotFoundError(f"no miner {miner_id!r} at this site", field="id")
        if mode is None:
            if miner_id not in self.holds:
                raise NotFoundError(f"miner {miner_id!r} is not held", field="mode")
            self._record(now, by, "hold released", f"hold:{miner_id}", reason, None)
            del self.holds[miner_id]
            self._changed("hold")
            return None
        if expires_at is None:
            raise OperatorError("until: a hold needs an expiry", field="until")
        self._check_expiry(expires_at, now, "until")
        hold = Hold(miner_id, mode, reason, by.name, now, expires_at)
        state = {
            "type": "hold",
            "miner": miner_id,
            "mode": mode.value,
            "reason": reason,
            "by": by.name,
            "since": now.isoformat(),
            "expires_at": expires_at.isoformat(),
        }
        self._record(now, by, f"hold {mode.value}", f"hold:{miner_id}", reason, state)
        self.holds[miner_id] = hold
        self._changed("hold")
        return hold

    def set_automation(self, *, paused: bool, reason: str, by: Principal, now: datetime) -> None:
        what = "automation paused" if paused else "automation resumed"
        state = (
            {"type": "automation", "paused": True, "reason": reason, "by": by.name,
             "since": now.isoformat()}
            if paused
            else None
        )  # fmt: skip
        self._record(now, by, what, "automation", reason, state)
        self.automation = Automation(paused, reason, by.name, now) if paused else Automation()
        self._changed("automation")

    def expire(self, now: datetime) -> None:
        """Drop what has expired, journaled like any other change (by the daemon)."""
        daemon = Principal("curtaild", Role.ADMIN)
        gone_overrides = [
            o for o in self.overrides.values() if o.expires_at and now >= o.expires_at
        ]
        gone_holds = [h for h in self.holds.values() if now >= h.expires_at]
        try:  # each one journaled, then dropped; what was dropped is published even if
            # a later write fails (JournalError propagates: the caller retries)
            for o in gone_overrides:
                self._record(now, daemon, "override expired", f"override:{o.id}", "expired", None)
                del self.overrides[o.id]
                self.created.pop(o.id, None)
            for h in gone_holds:
                self._record(now, daemon, "hold expired", f"hold:{h.miner_id}", "expired", None)
                del self.holds[h.miner_id]
        finally:
            if gone_overrides or gone_holds:
                self._changed("expiry")

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _check_expiry(expires_at: datetime, now: datetime, field: str = "expires_at") -> None:
        if expires_at <= now:
            raise OperatorError(f"{field}: the expiry has already passed", field=field)
        if expires_at - now > MAX_EXPIRY:
            raise OperatorError(
                f"{field}: the expiry is more than {MAX_EXPIRY.days} days away", field=field
            )

    def _record(  # noqa: PLR0917 - one journaled change, spelled out
        self,
        now: datetime,
        by: Principal,
        what: str,
        key: str,
        reason: str,
        state: dict[str, Any] | None,
    ) -> None:
        # Write ahead: journaled (raises JournalError) before anything held changes.
        detail: dict[str, Any] = {
            "by": by.name,
            "role": by.role.name.lower(),
            "what": what,
            "why": reason,
        }
        if state is not None:
            detail["state"] = state
        self._journal.record_operator(now, key, detail, key=key, state=state)
        log.info(what, subject=key, by=by.name, reason=reason)

    def _changed(self, cause: str) -> None:
        self.version += 1
        self._publish()
        if self.on_change is not None:
            self.on_change(cause)

    def _publish(self) -> None:
        self._inbox.overrides = tuple(self.overrides.values())

    def _restore(self, standing: Mapping[str, dict[str, Any]]) -> None:
        for key, state in standing.items():
            try:
                self._restore_one(key, state)
            except (KeyError, TypeError, ValueError):
                # One unreadable row must not keep the daemon (and every grid limit) down.
                log.exception("journaled operator state unreadable; ignored", key=key)
        if standing:
            log.info(
                "operator state restored",
                overrides=sorted(self.overrides),
                holds=sorted(self.holds),
                paused=self.automation.paused,
            )

    def _restore_one(self, key: str, state: dict[str, Any]) -> None:
        kind = state.get("type")
        if kind == "override":
            self.overrides[state["id"]] = Override(
                state["id"],
                int(state["limit_w"]),
                state["reason"],
                state["by"],
                _aware(state["expires_at"]),
            )
            self.created[state["id"]] = _aware(state["created_at"])
        elif kind == "hold" and state["miner"] in self._miners:
            self.holds[state["miner"]] = Hold(
                state["miner"],
                HoldMode(state["mode"]),
                state["reason"],
                state["by"],
                _aware(state["since"]),
                _aware(state["expires_at"]),
            )
        elif kind == "automation":
            self.automation = Automation(
                paused=True,
                reason=state["reason"],
                by=state["by"],
                since=_aware(state["since"]),
            )
        else:
            log.warning("journaled operator state ignored", key=key, state=state)


def _aware(text: str) -> datetime:
    """A journaled time; one without an offset (never written so) is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
