"""openleadr's own VTN (OpenADRServer) over HTTPS with client certificates on loopback: the
grid side of the OpenADR tests and of `curtaild demo --scenario openadr`'s tests. It
records what the VEN tells it: registrations, opt responses, report values. It can forget
a venID (a VTN that lost its records: it answers 463) and drop or cancel events the ways
a VTN may."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from openleadr import OpenADRServer, errors, objects, utils

VTN_ID = "TEST-VTN"


@dataclass
class Recorded:
    registrations: list[str] = field(default_factory=list)  # ven names, in order
    responses: list[dict[str, Any]] = field(default_factory=list)  # eventResponses
    values: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)  # r_id ->


class Vtn:
    """One VTN process's state; `stop` and a new Vtn on the same port is a VTN restart
    that forgot every registration."""

    def __init__(
        self,
        *,
        port: int,
        cert: tuple[Path, Path],
        ca: Path,
        poll_s: float = 0.5,
        report_s: float = 1.0,
        recorded: Recorded | None = None,
    ) -> None:
        self.recorded = recorded or Recorded()
        self.vens: dict[str, dict[str, Any]] = {}
        self.forgotten: set[str] = set()
        self.report_s = report_s
        self.server = OpenADRServer(
            vtn_id=VTN_ID,
            http_port=port,
            http_host="127.0.0.1",
            http_cert=str(cert[0]),
            http_key=str(cert[1]),
            http_ca_file=str(ca),
            requested_poll_freq=timedelta(seconds=poll_s),
            ven_lookup=self.lookup,
            show_fingerprint=False,
        )
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._on_register_report)
        service = self.server.services["event_service"]
        created = service.handlers["oadrCreatedEvent"]

        async def capture(payload: dict[str, Any]) -> Any:
            self.recorded.responses.extend(payload.get("event_responses") or [])
            return await created(payload)

        service.handlers["oadrCreatedEvent"] = capture
        self.url = f"https://127.0.0.1:{port}/OpenADR2/Simple/2.0b"

    def lookup(self, ven_id: str) -> dict[str, Any] | None:
        if ven_id in self.forgotten:
            # Registered once, its certificate no longer known: openleadr answers 463.
            return {"ven_id": ven_id, "registration_id": "lost", "fingerprint": None}
        return self.vens.get(ven_id)

    def enrol(self, ven_id: str, ven_name: str, cert: Path) -> None:
        """Enrol a VEN out of band (its venID and certificate fingerprint), as programmes
        do for a VEN configured with its own venID."""
        fingerprint = utils.certificate_fingerprint(cert.read_text())
        self.vens[ven_id] = {
            "ven_id": ven_id,
            "ven_name": ven_name,
            "fingerprint": fingerprint,
            "registration_id": "enrolled",
        }

    def forget(self, ven_id: str) -> None:
        """Lose every record of `ven_id` (and its events): its polls and a registration
        under it are answered 463 (not registered or authorized)."""
        self.vens.pop(ven_id)
        self.server.events.pop(ven_id, None)
        self.forgotten.add(ven_id)

    def _register(self, payload: dict[str, Any]) -> tuple[str, str]:
        if payload.get("ven_id") in self.forgotten:
            raise errors.NotRegisteredOrAuthorizedError(f"venID {payload['ven_id']} unknown")
        ven_id = payload.get("ven_id") or f"ven-{uuid.uuid4().hex[:8]}"
        registration_id = f"reg-{uuid.uuid4().hex[:8]}"
        self.vens[ven_id] = {
            "ven_id": ven_id,
            "ven_name": payload["ven_name"],
            "fingerprint": payload["fingerprint"],
            "registration_id": registration_id,
        }
        self.recorded.registrations.append(payload["ven_name"])
        return ven_id, registration_id

    async def _on_register_report(self, report: dict[str, Any]) -> list[tuple[Any, ...]]:
        every = timedelta(seconds=self.report_s)
        return [
            (rd["r_id"], self._collector(rd["r_id"]), every) for rd in report["report_descriptions"]
        ]

    def _collector(self, r_id: str) -> Callable[[list[tuple[datetime, float]]], None]:
        def collect(values: list[tuple[datetime, float]]) -> None:
            self.recorded.values.setdefault(r_id, []).extend(values)

        return collect

    @property
    def ven_id(self) -> str:
        assert len(self.vens) == 1, self.vens
        return next(iter(self.vens))

    async def start(self) -> None:
        await self.server.run()

    async def stop(self) -> None:
        await self.server.stop()

    def add_event(
        self,
        event_id: str,
        *,
        start: datetime,
        minutes: float = 10,
        signal_name: str = "SIMPLE",
        signal_type: str = "level",
        payload: float = 2,
        ramp_up_s: float | None = None,
        test_event: bool = False,
    ) -> None:
        self.server.add_event(
            ven_id=self.ven_id,
            signal_name=signal_name,
            signal_type=signal_type,
            intervals=[
                objects.Interval(
                    dtstart=start, duration=timedelta(minutes=minutes), signal_payload=payload
                )
            ],
            event_id=event_id,
            ramp_up_period=timedelta(seconds=ramp_up_s) if ramp_up_s else None,
            callback=lambda ven_id, event_id, opt_type: None,
        )
        if test_event:
            self.event(event_id).event_descriptor.test_event = True

    def event(self, event_id: str) -> Any:
        events = self.server.events[self.ven_id]
        found = utils.find_by(events, "event_descriptor.event_id", event_id)
        assert found is not None, event_id
        return found

    def modify(self, event_id: str, *, payload: float) -> None:
        """A modification: a new payload under the next modification number."""
        event = self.event(event_id)
        for signal in event.event_signals:
            for interval in signal.intervals:
                interval.signal_payload = payload
        utils.increment_event_modification_number(event)
        self.server.events_updated[self.ven_id] = True

    def cancel(self, event_id: str, *, same_modification: bool = False) -> None:
        """openleadr's cancel (the next modification number), or a status change to
        cancelled under the same one, as some VTNs send it."""
        if not same_modification:
            self.server.cancel_event(self.ven_id, event_id)
            return
        self.event(event_id).event_descriptor.event_status = "cancelled"
        self.server.events_updated[self.ven_id] = True

    def drop(self, event_id: str) -> None:
        """The event disappears from the VTN's list (an operator deleted it): 2.0b's
        implied cancel, seen only as its absence from the next distribution."""
        events = self.server.events[self.ven_id]
        events.remove(self.event(event_id))
        self.server.events_updated[self.ven_id] = True

    def opt(self, event_id: str) -> list[str]:
        """The opt types the VEN sent for `event_id`, in order."""
        return [r["opt_type"] for r in self.recorded.responses if r["event_id"] == event_id]
