"""Measured power: the site meter and the PDU outlets, polled in the background.

The meter is what the grid judges the farm by; PDU outlets measure each miner's draw and
switch its power. Both are read continuously into stores the supervisor freezes, like the
miners' own readings. A device that fails is logged once when it starts and once when it
recovers; what it last said ages until it counts as unknown (the worst case).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import structlog

from controller.clock import Clock
from controller.core.model import OutletReading
from controller.loop.telemetry import Activity, Readings
from drivers.errors import DriverError, driver_bug
from drivers.types import MeterDriver, MeterReading, PduDriver, SensorDriver

log = structlog.get_logger("curtaild.measure")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MeterSample:
    reading: MeterReading
    at: datetime


class DeviceHealth:
    """Logs a device's failures once when they start and once when they end."""

    def __init__(self) -> None:
        self.faults: dict[str, str] = {}

    def failed(self, device: str, err: DriverError) -> None:
        reason = f"{err.kind}: {err.detail}"
        if self.faults.get(device) != reason:
            log.warning("device unhealthy", device=device, reason=reason)
        self.faults[device] = reason

    def ok(self, device: str) -> None:
        was = self.faults.pop(device, None)
        if was is not None:
            log.info("device recovered", device=device, was=was)


class Measurements:
    """Polls the meter and the PDUs; the supervisor reads `meter` and the outlet views."""

    def __init__(
        self,
        *,
        meter: MeterDriver | None,
        pdus: Mapping[str, PduDriver],
        wiring: Mapping[tuple[str, int], str],
        readings: Readings,
        clock: Clock,
        meter_interval_s: float,
        pdu_interval_s: float,
        activity: Activity,
        on_meter: Callable[[MeterSample | None], None] | None = None,
        sensors: Mapping[str, SensorDriver] | None = None,
        sensor_interval_s: float = 10.0,
    ) -> None:
        """`wiring`: (pdu, outlet) -> the miner it feeds. `on_meter` is told every meter
        poll's result (None: the read failed), so the frequency relay reacts at once."""
        self.meter = meter
        self.pdus = pdus
        self._wiring = wiring
        self._readings = readings
        self._clock = clock
        self._meter_interval_s = meter_interval_s
        self._pdu_interval_s = pdu_interval_s
        self._activity = activity
        self.on_meter = on_meter
        self.health = DeviceHealth()
        self.last: MeterSample | None = None
        self.pdu_sweeps = 0
        self.meter_reads = 0
        self.sensors = dict(sensors or {})  # container -> its ambient sensor
        self._sensor_interval_s = sensor_interval_s
        self.ambient: dict[str, tuple[float, datetime]] = {}  # container -> (degC, read at)

    async def run_sensors(self) -> None:
        """Container ambient temperatures (the cold-weather rules read them)."""
        while True:
            for container, sensor in self.sensors.items():
                value = await self._read(sensor.name, sensor.read)
                if value is not None:
                    self.ambient[container] = (value, self._clock.now())
            await self._clock.sleep(self._sensor_interval_s)

    async def run_meter(self) -> None:
        meter = self.meter
        if meter is None:
            return
        while True:
            started = self._clock.time()
            sample: MeterSample | None = None
            reading = await self._read(meter.name, meter.read)
            if reading is not None:
                sample = self.last = MeterSample(reading, self._clock.now())
                self.meter_reads += 1
            if self.on_meter is not None:
                self.on_meter(sample)
            spent = self._clock.time() - started
            await self._clock.sleep(max(0.0, self._meter_interval_s - spent))

    async def run_pdus(self) -> None:
        if not self.pdus:
            return
        while True:
            started = self._clock.time()
            self._activity.begin()
            try:
                await asyncio.gather(
                    *(self._read_pdu(name, pdu) for name, pdu in self.pdus.items())
                )
            finally:
                self._activity.end()
            self.pdu_sweeps += 1
            spent = self._clock.time() - started
            await self._clock.sleep(max(0.0, self._pdu_interval_s - spent))

    async def _read_pdu(self, name: str, pdu: PduDriver) -> None:
        reading = await self._read(name, pdu.read)
        if reading is None:
            return
        at = self._clock.now()
        for outlet in reading.outlets:
            miner_id = self._wiring.get((name, outlet.outlet))
            if miner_id is not None:
                self._readings.record_outlet(miner_id, OutletReading(outlet.on, outlet.power_w, at))

    async def _read(self, device: str, read: Callable[[], Awaitable[T]]) -> T | None:
        """One device read; a failure is logged once as the device's health and gives None
        (what it last said ages toward unknown). A bug in a driver stays with its device."""
        try:
            value = await read()
        except DriverError as err:
            self.health.failed(device, err)
            return None
        except Exception as err:  # noqa: BLE001 - one broken device must not stop the loop
            self.health.failed(device, driver_bug(device, "read", err))
            return None
        self.health.ok(device)
        return value

    def meter_fresh(self, now: datetime, stale_after_s: float) -> MeterSample | None:
        last = self.last
        if last is None or (now - last.at).total_seconds() > stale_after_s:
            return None
        return last
