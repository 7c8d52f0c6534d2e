"""Modbus TCP simulators (switched PDU, site meter, temperature sensor) on pymodbus's own
server, in-process on a loopback address. The register layout comes from a RegisterMap
(sim.modbus_registers lays it out); every request refills the registers it touches from
live state, and writes switch outlets.

Faults: refuse (nothing listens), stall (a request is read and never answered), slow,
exception (every request gets Modbus exception 4), drop (each connection serves a few
requests, then is cut mid-batch), lie (PDU: switch writes are acknowledged and read back as
commanded, but the outlet keeps its power).

A PDU may have a breaker: too many outlets switched on at once (inrush) trips it, and every
outlet goes dark while the PDU itself keeps answering.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol, cast

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus_map import (
    BIT_TABLES,
    TABLES,
    CodecError,
    Point,
    Raw,
    RegisterMap,
    Table,
    decode_state,
    encode_state,
)
from sim.faults import Fault, FaultState
from sim.modbus_registers import contiguous_runs, encode_saturated, put_registers, valid_addresses

log = structlog.get_logger("curtaild.sim")

STALL_HOLD_S = 60.0  # a stalled request is released at stop, or after this long
DROP_AFTER = 2  # requests each connection serves under the drop fault before it is cut

# Function code -> table (read and write codes alike).
_FC_TABLE: dict[int, Table] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}


class OutletPort(Protocol):
    """What a PDU outlet feeds: its true draw, and whether power is on."""

    @property
    def on(self) -> bool: ...

    def power_w(self) -> float: ...

    def set_on(self, on: bool) -> None: ...


class EmptyOutlet:
    """An outlet with nothing plugged in: 0 W, remembers on/off."""

    def __init__(self, on: bool = True) -> None:
        self._on = on

    @property
    def on(self) -> bool:
        return self._on

    def power_w(self) -> float:
        return 0.0

    def set_on(self, on: bool) -> None:
        self._on = on


class ModbusSim:
    """One simulated Modbus device on host:port: server lifecycle, faults, register images.
    A subclass says what each table holds right now and what a write does."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        regmap: RegisterMap,
        *,
        unit: int = 1,
        fault: FaultState | None = None,
        time_fn: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port  # 0 until started: then the bound port, kept across restarts
        self.regmap = regmap
        self.unit = unit
        self.fault = fault or FaultState()
        self.time_fn = time_fn
        self.requests = 0
        self.in_flight = 0  # requests being handled right now
        self.peak_in_flight = 0  # most ever handled at once (one-in-flight checks)
        self._server: ModbusTcpServer | None = None
        self._held: set[asyncio.Task[object]] = set()
        self._served = 0  # requests on the newest connection (the drop fault counts these)
        self._valid = valid_addresses(regmap)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None or self.fault.mode is Fault.REFUSE:
            return
        # A fresh server each time: pymodbus does not listen again after a shutdown.
        server = ModbusTcpServer(
            self._device(), address=(self.host, self.port), trace_connect=self._on_connect
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as err:  # pymodbus's word for "could not listen"
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port}") from err
        self._server = server
        if self.port == 0:
            self.port = cast("asyncio.Server", server.transport).sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._held):
            task.cancel()
        self._held.clear()
        if self._server is not None:
            server, self._server = self._server, None
            # Closes the listener and every open connection.
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        """Change the fault live; `refuse` stops listening, anything else listens again."""
        self.fault.mode = mode
        if slow_s is not None:
            self.fault.slow_s = slow_s
        if mode is not Fault.STALL:
            for task in list(self._held):
                task.cancel()
        if mode is Fault.REFUSE:
            await self.stop()
        else:
            await self.start()

    # ---- what a subclass provides ----

    def values(self, table: Table) -> dict[int, Raw]:
        """Every point's raw value in `table` right now, by address."""
        raise NotImplementedError

    def write(self, table: Table, address: int, values: list[Raw]) -> ExcCodes | None:
        """Apply a write; an exception code if the device refuses it."""
        del table, address, values
        return ExcCodes.ILLEGAL_ADDRESS

    # ---- the server's side ----

    def _device(self) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in TABLES:
            addresses = sorted(self._valid[table])
            if table in BIT_TABLES:
                first, last = (addresses[0], addresses[-1]) if addresses else (0, 0)
                values = [False] * (last - first + 1)
                blocks.append([SimData(first, values=values, datatype=DataType.BITS)])
            else:
                blocks.append(
                    [
                        SimData(start, values=[0] * count, datatype=DataType.REGISTERS)
                        for start, count in contiguous_runs(addresses or [0])
                    ]
                )
        return SimDevice(
            id=self.unit,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=self._action,
        )

    async def _action(  # noqa: PLR0917 - pymodbus's callback signature
        self,
        func_code: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this on every request, in that request's own task."""
        self.requests += 1
        self._served += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._serve(func_code, start, address, count, registers, set_values)
        finally:
            self.in_flight -= 1

    async def _serve(  # noqa: PLR0917 - the callback's arguments, passed on
        self,
        func_code: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        mode = self.fault.mode
        if mode is Fault.STALL:
            await self._never_answer(STALL_HOLD_S)
        if mode is Fault.DROP and self._served > DROP_AFTER:
            self._drop_connections()
            await self._never_answer(0)
        if mode is Fault.EXCEPTION:
            return ExcCodes.DEVICE_FAILURE
        if mode is Fault.SLOW:
            await asyncio.sleep(self.fault.slow_s)
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self.write(table, address, list(set_values))
        valid = self._valid[table]
        # pymodbus passes bit reads' count in registers; the first bit is what we can check.
        span = [address] if table in BIT_TABLES else range(address, address + count)
        if any(a not in valid for a in span):
            return ExcCodes.ILLEGAL_ADDRESS
        self._fill(table, start, registers)
        return None

    def _fill(self, table: Table, start: int, registers: list[int]) -> None:
        values = self.values(table)
        if table not in BIT_TABLES:
            for address, value in values.items():
                registers[address - start] = int(value)
            return
        # Bit blocks are packed 16 to a register, bit 0 first; `start` counts registers.
        for address, value in values.items():
            index, bit = address // 16 - start, address % 16
            if value:
                registers[index] |= 1 << bit
            else:
                registers[index] &= ~(1 << bit)

    async def _never_answer(self, seconds: float) -> NoReturn:
        task = asyncio.current_task()
        if task is not None:
            self._held.add(task)
        try:
            await asyncio.sleep(seconds)
        finally:
            if task is not None:
                self._held.discard(task)
        # pymodbus handles each request in a task of its own and catches only Exception:
        # ending that task cancelled sends nothing and logs nothing.
        raise asyncio.CancelledError

    def _drop_connections(self) -> None:
        if self._server is None:
            return
        for connection in list(self._server.active_connections.values()):
            if connection.transport is not None:
                cast("asyncio.Transport", connection.transport).abort()

    def _on_connect(self, up: bool) -> None:
        if up:
            self._served = 0


class SimPdu(ModbusSim):
    """A switched PDU: outlet states, per-outlet and total power, switching per the map.

    With `breaker_max_on`, switching more outlets on than that within any `breaker_window_s`
    trips its breaker: every outlet goes off (its miner loses power) and reads off."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        regmap: RegisterMap,
        outlets: Sequence[OutletPort],
        *,
        unit: int = 1,
        fault: FaultState | None = None,
        rng: random.Random | None = None,
        noise_w: float = 0.0,
        time_fn: Callable[[], float] = time.monotonic,
        breaker_max_on: int | None = None,
        breaker_window_s: float = 1.0,
    ) -> None:
        if regmap.kind != "pdu":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a PDU map")
        if len(outlets) > regmap.outlets:
            raise ValueError(f"{name}: {len(outlets)} ports for {regmap.outlets} outlets")
        if breaker_max_on is not None and breaker_max_on < 1:
            raise ValueError(f"{name}: breaker_max_on must be at least 1")
        if not breaker_window_s > 0:
            raise ValueError(f"{name}: breaker_window_s must be positive")
        super().__init__(name, host, port, regmap, unit=unit, fault=fault, time_fn=time_fn)
        # Outlets the caller left out have nothing plugged in.
        self.outlets: list[OutletPort] = [
            *outlets,
            *(EmptyOutlet() for _ in range(regmap.outlets - len(outlets))),
        ]
        self.noise_w = noise_w  # measurement jitter (standard deviation) on outlet power
        self.rng = rng or random.Random(f"{name}:{host}:{port}")  # noqa: S311 - not crypto
        self.switches: list[tuple[float, int, bool]] = []  # (time_fn, outlet, on) commanded
        self._commanded: dict[int, bool] = {}  # lie: what reads show instead of the truth
        self.breaker_max_on = breaker_max_on
        self.breaker_window_s = breaker_window_s
        self.breaker_trips = 0
        self._switched_on: deque[float] = deque()  # when outlets last went on, for inrush
        self._targets: dict[tuple[Table, int], tuple[Point, int]] = {}
        for point in (regmap.get("outlet_state"), regmap.get("outlet_switch")):
            if point is not None and point.writable:
                for outlet in range(1, regmap.outlets + 1):
                    for a in range(
                        point.address_of(outlet), point.address_of(outlet) + point.width
                    ):
                        self._targets[point.table, a] = (point, outlet)

    def shown(self, outlet: int) -> bool:
        """The state reads report for `outlet` (1-based): the truth, or the lie."""
        return self._commanded.get(outlet, self.outlets[outlet - 1].on)

    def outlet_power_w(self, outlet: int) -> float:
        power = self.outlets[outlet - 1].power_w()
        if self.noise_w > 0 and power > 0:
            power += self.rng.gauss(0.0, self.noise_w)
        return max(0.0, power)

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        if mode is not Fault.LIE:
            self._commanded.clear()
        await super().set_fault(mode, slow_s=slow_s)

    def values(self, table: Table) -> dict[int, Raw]:
        cells: dict[int, Raw] = {}
        raw: Sequence[Raw]
        powers = [self.outlet_power_w(n) for n in range(1, self.regmap.outlets + 1)]
        for point in self.regmap.points.values():
            if point.table != table:
                continue
            if point.per_outlet:
                for outlet in range(1, self.regmap.outlets + 1):
                    if point.name == "outlet_power_w":
                        raw = encode_saturated(point, powers[outlet - 1])
                    else:
                        raw = encode_state(point, self.shown(outlet))
                    put_registers(cells, point.address_of(outlet), raw)
            else:  # total_power_w
                put_registers(cells, point.address, encode_saturated(point, sum(powers)))
        return cells

    def write(self, table: Table, address: int, values: list[Raw]) -> ExcCodes | None:
        written = range(address, address + len(values))
        commands: dict[int, bool] = {}
        for a in written:
            target = self._targets.get((table, a))
            if target is None:
                return ExcCodes.ILLEGAL_ADDRESS
            point, outlet = target
            first = point.address_of(outlet)
            if first not in written or first + point.width - 1 not in written:
                return ExcCodes.ILLEGAL_ADDRESS  # half a multi-register value
            if outlet not in commands:
                raw = values[first - address : first - address + point.width]
                try:
                    commands[outlet] = decode_state(point, raw)
                except CodecError:
                    return ExcCodes.ILLEGAL_VALUE
        for outlet, on in commands.items():
            self._switch(outlet, on)
        return None

    def trip(self) -> None:
        """The breaker opens: every outlet loses power; the PDU's own supply stays up."""
        self.breaker_trips += 1
        self._switched_on.clear()
        self._commanded.clear()  # nothing to pretend about: the relays all dropped
        for port in self.outlets:
            if port.on:
                port.set_on(False)

    def _switch(self, outlet: int, on: bool) -> None:
        now = self.time_fn()
        self.switches.append((now, outlet, on))
        if self.fault.lying:
            self._commanded[outlet] = on
            return
        port = self.outlets[outlet - 1]
        inrush = on and not port.on  # an outlet already on draws no inrush
        port.set_on(on)
        if inrush and self.breaker_max_on is not None:
            recent = self._switched_on
            while recent and recent[0] <= now - self.breaker_window_s:
                recent.popleft()
            recent.append(now)
            if len(recent) > self.breaker_max_on:
                log.warning(
                    "sim_breaker_trip",
                    pdu=self.name,
                    switched_on=len(recent),
                    window_s=self.breaker_window_s,
                    max_on=self.breaker_max_on,
                )
                self.trip()


class SimMeter(ModbusSim):
    """A site meter: import/export from the farm's load, base load and generation, and a
    scriptable grid frequency; values refresh at most every `update_interval_s`."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        regmap: RegisterMap,
        *,
        load_w: Callable[[], float],
        time_fn: Callable[[], float],
        base_load_w: float = 0.0,
        noise_w: float = 0.0,
        update_interval_s: float = 1.0,
        generation_w: Callable[[], float] | None = None,
        nominal_hz: float = 50.0,
        seed: int = 1,
        unit: int = 1,
        fault: FaultState | None = None,
    ) -> None:
        if regmap.kind != "meter":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a meter map")
        super().__init__(name, host, port, regmap, unit=unit, fault=fault, time_fn=time_fn)
        self.load_w = load_w
        self.generation_w = generation_w
        self.base_load_w = base_load_w
        self.noise_w = noise_w  # standard deviation; clamped to 3 of them
        self.update_interval_s = update_interval_s
        self.nominal_hz = nominal_hz
        self._rng = random.Random(seed)  # noqa: S311 - not crypto
        self._script: list[tuple[float, float]] = []  # (time_fn time, Hz), linear between
        self._held_values: tuple[float, float, float, float] | None = None
        self._updated_at = 0.0

    def frequency_at(self, t: float) -> float:
        """The scripted frequency at time `t`: linear between points, then the last one."""
        script = self._script
        if not script:
            return self.nominal_hz
        if t <= script[0][0]:
            return script[0][1]
        for (t0, f0), (t1, f1) in itertools.pairwise(script):
            if t <= t1:
                return f0 if t1 == t0 else f0 + (f1 - f0) * (t - t0) / (t1 - t0)
        return script[-1][1]

    def script_frequency(self, points: Sequence[tuple[float, float]]) -> None:
        """From the current value, go linearly to each (seconds from now, Hz); hold the last."""
        now = self.time_fn()
        offsets = [dt for dt, _ in points]
        if any(dt < 0 for dt in offsets) or offsets != sorted(offsets):
            raise ValueError("frequency script offsets must be >= 0 and in order")
        self._script = [(now, self.frequency_at(now)), *((now + dt, hz) for dt, hz in points)]

    def set_frequency(self, hz: float) -> None:
        self._script = [(self.time_fn(), hz)]

    def reading(self) -> tuple[float, float, float, float]:
        """(import W, export W, frequency Hz, generation W) as the meter shows them now."""
        now = self.time_fn()
        if self._held_values is None or now - self._updated_at >= self.update_interval_s:
            generation = self.generation_w() if self.generation_w is not None else 0.0
            net = self.load_w() + self.base_load_w - generation
            if self.noise_w > 0:
                bound = 3 * self.noise_w
                net += max(-bound, min(bound, self._rng.gauss(0.0, self.noise_w)))
            self._held_values = (max(0.0, net), max(0.0, -net), self.frequency_at(now), generation)
            self._updated_at = now
        return self._held_values

    def values(self, table: Table) -> dict[int, Raw]:
        import_w, export_w, hz, generation_w = self.reading()
        shown = {
            "import_kw": import_w / 1000,
            "export_kw": export_w / 1000,
            "generation_kw": generation_w / 1000,
            "frequency_hz": hz,
        }
        cells: dict[int, Raw] = {}
        for point in self.regmap.points.values():
            if point.table == table:
                put_registers(cells, point.address, encode_saturated(point, shown[point.name]))
        return cells


class SimSensor(ModbusSim):
    """A temperature sensor reading `temperature_c()` live."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        regmap: RegisterMap,
        *,
        temperature_c: Callable[[], float],
        unit: int = 1,
        fault: FaultState | None = None,
        time_fn: Callable[[], float] = time.monotonic,
    ) -> None:
        if regmap.kind != "sensor":
            raise ValueError(f"{name}: {regmap.source} is a {regmap.kind} map, not a sensor map")
        super().__init__(name, host, port, regmap, unit=unit, fault=fault, time_fn=time_fn)
        self.temperature_c = temperature_c

    def values(self, table: Table) -> dict[int, Raw]:
        point = self.regmap.point("temperature_c")
        if point.table != table:
            return {}
        cells: dict[int, Raw] = {}
        put_registers(cells, point.address, encode_saturated(point, self.temperature_c()))
        return cells


__all__ = [
    "DROP_AFTER",
    "STALL_HOLD_S",
    "EmptyOutlet",
    "ModbusSim",
    "OutletPort",
    "SimMeter",
    "SimPdu",
    "SimSensor",
]
