"""PDU, meter and sensor drivers against the in-process Modbus simulators, over real TCP."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from drivers.errors import (
    DeviceTimeoutError,
    ProtocolError,
    RejectedError,
    UnreachableError,
    UnsupportedError,
    VerificationError,
)
from drivers.meter.modbus_meter import ModbusMeter
from drivers.meter.sensor import ModbusTemperature
from drivers.modbus_map import RegisterMap, load_map, parse_map
from drivers.pdu.modbus_pdu import ModbusPdu
from drivers.transport.modbus import ModbusLink
from sim.faults import Fault
from sim.modbus import DROP_AFTER, EmptyOutlet, ModbusSim, SimMeter, SimPdu, SimSensor
from tests.unit.conftest import Time

HOST = "127.0.0.1"
TIMEOUT_S = 0.25  # per attempt; with one retry a call's deadline is 0.5 s
PDU_MAPS = ["pdu-coil-24", "pdu-register-16"]


class Miner:
    """An outlet port with a miner behind it: draws `watts` while powered."""

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self._on = True

    @property
    def on(self) -> bool:
        return self._on

    def power_w(self) -> float:
        return self.watts if self._on else 0.0

    def set_on(self, on: bool) -> None:
        self._on = on


@dataclass
class Bench:
    sims: list[ModbusSim] = field(default_factory=list)
    links: list[ModbusLink] = field(default_factory=list)

    async def serve(self, sim: ModbusSim) -> ModbusSim:
        await sim.start()
        self.sims.append(sim)
        return sim

    def link(self, name: str, sim: ModbusSim) -> ModbusLink:
        link = ModbusLink(name, HOST, sim.port, timeout_s=TIMEOUT_S, retries=1)
        self.links.append(link)
        return link


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    b = Bench()
    yield b
    for link in b.links:
        await link.close()
    for sim in b.sims:
        await sim.stop()


@dataclass
class PduRig:
    sim: SimPdu
    pdu: ModbusPdu
    miners: list[Miner]
    regmap: RegisterMap


MakePdu = Callable[[str], Awaitable[PduRig]]


@pytest.fixture
def make_pdu(bench: Bench, clock: Time) -> MakePdu:
    async def make(map_name: str) -> PduRig:
        regmap = load_map(map_name)
        miners = [Miner(3000 + 100 * i) for i in range(4)]
        sim = SimPdu("pdu-1", HOST, 0, regmap, [*miners, EmptyOutlet(on=False)], time_fn=clock)
        await bench.serve(sim)
        pdu = ModbusPdu("pdu-1", bench.link("pdu-1", sim), regmap, readback_interval_s=0.02)
        return PduRig(sim, pdu, miners, regmap)

    return make


# ---- PDU ----


@pytest.mark.parametrize("map_name", PDU_MAPS)
async def test_pdu_read_reports_every_outlet_in_block_reads(
    make_pdu: MakePdu, map_name: str
) -> None:
    rig = await make_pdu(map_name)
    reading = await rig.pdu.read()
    assert len(reading.outlets) == rig.regmap.outlets
    assert [o.outlet for o in reading.outlets] == list(range(1, rig.regmap.outlets + 1))
    assert [o.power_w for o in reading.outlets[:5]] == pytest.approx([3000, 3100, 3200, 3300, 0])
    assert [o.on for o in reading.outlets[:6]] == [True, True, True, True, False, True]
    assert reading.total_w == pytest.approx(12600)
    # Block reads: state, per-outlet power and total in 3 requests (2 where they interleave).
    assert rig.sim.requests == (3 if map_name == "pdu-coil-24" else 2)


@pytest.mark.parametrize("map_name", PDU_MAPS)
async def test_pdu_switch_off_and_on(make_pdu: MakePdu, clock: Time, map_name: str) -> None:
    rig = await make_pdu(map_name)
    off = await rig.pdu.switch(2, on=False)
    assert (off.outlet, off.on, off.power_w) == (2, False, 0.0)
    assert rig.miners[1].on is False
    clock.now += 5
    on = await rig.pdu.switch(2, on=True)
    assert on.on is True
    assert on.power_w == pytest.approx(3100)
    assert rig.sim.switches == [(clock.now - 5, 2, False), (clock.now, 2, True)]
    assert (await rig.pdu.read()).total_w == pytest.approx(12600)


@pytest.mark.parametrize("map_name", PDU_MAPS)
async def test_pdu_switch_the_lie_fault_ignores_is_a_verification_error(
    make_pdu: MakePdu, map_name: str
) -> None:
    rig = await make_pdu(map_name)
    await rig.sim.set_fault(Fault.LIE)
    with pytest.raises(VerificationError) as caught:
        await rig.pdu.switch(3, on=False)
    assert "pdu-1" in str(caught.value)
    assert "outlet_state[3] reads off but it still draws 3200 W" in str(caught.value)
    assert rig.miners[2].on is True
    # The outlet's state read back shows the lie; only the measured power gives it away.
    reading = await rig.pdu.read()
    assert reading.outlets[2].on is False
    assert reading.outlets[2].power_w == pytest.approx(3200)


@pytest.mark.parametrize("outlet", [0, 25])
async def test_pdu_switch_an_outlet_the_map_lacks_is_unsupported(
    make_pdu: MakePdu, outlet: int
) -> None:
    rig = await make_pdu("pdu-coil-24")
    with pytest.raises(UnsupportedError, match=f"no outlet {outlet}: the map has outlets 1..24"):
        await rig.pdu.switch(outlet, on=False)
    assert rig.sim.switches == []


async def test_pdu_exception_fault_is_rejected_naming_device_and_point(
    make_pdu: MakePdu,
) -> None:
    rig = await make_pdu("pdu-coil-24")
    await rig.sim.set_fault(Fault.EXCEPTION)
    with pytest.raises(RejectedError) as caught:
        await rig.pdu.read()
    assert caught.value.code == 4
    assert str(caught.value) == (
        "pdu-1: read: Modbus exception 4 (server device failure) "
        "reading outlet_state[1-24] at coil 0+24"
    )


async def test_pdu_refuse_is_unreachable(make_pdu: MakePdu) -> None:
    rig = await make_pdu("pdu-coil-24")
    await rig.sim.set_fault(Fault.REFUSE)
    with pytest.raises(UnreachableError, match=r"pdu-1: read: .*outlet_state\[1-24\]"):
        await rig.pdu.read()


async def test_pdu_stall_is_a_timeout_within_the_deadline(make_pdu: MakePdu) -> None:
    rig = await make_pdu("pdu-register-16")
    await rig.pdu.read()
    await rig.sim.set_fault(Fault.STALL)
    with pytest.raises(DeviceTimeoutError) as caught:
        await rig.pdu.switch(1, on=False)
    assert str(caught.value) == (
        "pdu-1: write: no reply within 0.5 s (waiting for the reply) "
        "writing outlet_switch[1] at holding 2000+1"
    )
    await rig.sim.set_fault(Fault.NONE)
    assert (await rig.pdu.switch(1, on=False)).on is False


async def test_pdu_drop_mid_batch_then_the_next_call_reconnects(make_pdu: MakePdu) -> None:
    rig = await make_pdu("pdu-coil-24")
    await rig.sim.set_fault(Fault.DROP)
    # A read is three requests; the connection is cut before the third is answered.
    with pytest.raises(UnreachableError, match=r"pdu-1: read: connection dropped .*total_power_w"):
        await rig.pdu.read()
    assert rig.sim.requests == DROP_AFTER + 1
    await rig.sim.set_fault(Fault.NONE)
    assert (await rig.pdu.read()).total_w == pytest.approx(12600)


async def test_pdu_link_recovers_after_a_restart_on_the_same_port(make_pdu: MakePdu) -> None:
    rig = await make_pdu("pdu-coil-24")
    await rig.pdu.read()
    port = rig.sim.port
    await rig.sim.stop()
    with pytest.raises(UnreachableError, match="pdu-1"):
        await rig.pdu.read()
    with pytest.raises(UnreachableError, match=f"no connection to {HOST}:{port}"):
        await rig.pdu.read()
    await rig.sim.start()
    assert rig.sim.port == port
    assert (await rig.pdu.read()).total_w == pytest.approx(12600)


async def test_link_exception_codes_name_the_point_and_the_address(
    make_pdu: MakePdu, bench: Bench
) -> None:
    rig = await make_pdu("pdu-register-16")
    link = bench.link("pdu-1", rig.sim)
    with pytest.raises(RejectedError) as caught:
        await link.read("input", 500, 4, what="outlet_power_w[1-2]")
    assert caught.value.code == 2
    assert str(caught.value) == (
        "pdu-1: read: Modbus exception 2 (illegal data address) "
        "reading outlet_power_w[1-2] at input 500+4"
    )
    with pytest.raises(RejectedError, match=r"exception 3 \(illegal data value\)") as bad_code:
        await link.write("holding", 2000, [7], what="outlet_switch[1]")
    assert bad_code.value.code == 3
    with pytest.raises(RejectedError, match=r"exception 2 .* writing total_power_w"):
        await link.write("holding", 1100, [1], what="total_power_w")
    assert rig.sim.switches == []


# ---- meter ----

METER_NO_GENERATION = """\
name: meter without generation, int32 watts, low word first
kind: meter
points:
  import_kw:    {table: holding, address: 10, type: int32, word_order: little, scale: 0.001}
  export_kw:    {table: holding, address: 12, type: int32, word_order: little, scale: 0.001}
  frequency_hz: {table: holding, address: 20, type: uint16, scale: 0.01}
"""


@dataclass
class Site:
    load_w: float = 100_000.0
    generation_w: float = 0.0


@dataclass
class MeterRig:
    sim: SimMeter
    meter: ModbusMeter
    site: Site


MakeMeter = Callable[..., Awaitable[MeterRig]]


@pytest.fixture
def make_meter(bench: Bench, clock: Time) -> MakeMeter:
    async def make(regmap: RegisterMap | None = None, **options: object) -> MeterRig:
        regmap = regmap or load_map("meter-float32")
        site = Site()
        sim = SimMeter(
            "meter-1",
            HOST,
            0,
            regmap,
            load_w=lambda: site.load_w,
            generation_w=lambda: site.generation_w,
            time_fn=clock,
            **options,  # type: ignore[arg-type]
        )
        await bench.serve(sim)
        return MeterRig(sim, ModbusMeter("meter-1", bench.link("meter-1", sim), regmap), site)

    return make


async def test_meter_import_includes_the_base_load(make_meter: MakeMeter) -> None:
    rig = await make_meter(base_load_w=8000)
    reading = await rig.meter.read()
    assert reading.import_w == pytest.approx(108_000)
    assert reading.export_w == 0
    assert reading.frequency_hz == pytest.approx(50.0)
    assert reading.generation_w == 0
    assert rig.sim.requests == 1  # four float32 values in one block read


async def test_meter_generation_beyond_the_load_is_export(
    make_meter: MakeMeter, clock: Time
) -> None:
    rig = await make_meter(base_load_w=5000)
    rig.site.generation_w = 150_000
    reading = await rig.meter.read()
    assert reading.import_w == 0
    assert reading.export_w == pytest.approx(45_000)
    assert reading.generation_w == pytest.approx(150_000)
    rig.site.generation_w = 60_000
    clock.now += 1
    reading = await rig.meter.read()
    assert reading.import_w == pytest.approx(45_000)
    assert reading.export_w == 0


async def test_meter_holds_values_between_updates(make_meter: MakeMeter, clock: Time) -> None:
    rig = await make_meter(update_interval_s=1.0)
    first = await rig.meter.read()
    rig.site.load_w = 40_000
    clock.now += 0.9
    assert await rig.meter.read() == first
    clock.now += 0.1
    assert (await rig.meter.read()).import_w == pytest.approx(40_000)


async def test_meter_noise_stays_in_bounds(make_meter: MakeMeter, clock: Time) -> None:
    rig = await make_meter(noise_w=200, seed=7)
    seen = []
    for _ in range(20):
        clock.now += 1
        seen.append((await rig.meter.read()).import_w)
    assert all(abs(w - 100_000) <= 3 * 200 for w in seen)
    assert len(set(seen)) > 10  # it does vary


async def test_meter_scripted_frequency_dip(make_meter: MakeMeter, clock: Time) -> None:
    rig = await make_meter(update_interval_s=0.5)
    rig.sim.script_frequency([(2, 49.2), (6, 49.2), (10, 50.0)])
    start = clock.now
    expected = {0.0: 50.0, 1.0: 49.6, 2.0: 49.2, 5.0: 49.2, 8.0: 49.6, 12.0: 50.0}
    for offset, hz in expected.items():
        clock.now = start + offset
        assert (await rig.meter.read()).frequency_hz == pytest.approx(hz, abs=1e-4), offset


async def test_meter_60_hz_and_a_step(make_meter: MakeMeter, clock: Time) -> None:
    rig = await make_meter(nominal_hz=60.0)
    assert (await rig.meter.read()).frequency_hz == pytest.approx(60.0)
    rig.sim.set_frequency(59.5)
    clock.now += 1
    assert (await rig.meter.read()).frequency_hz == pytest.approx(59.5)


async def test_meter_without_generation_reports_none(make_meter: MakeMeter) -> None:
    rig = await make_meter(parse_map(METER_NO_GENERATION, source="int32.yaml"))
    reading = await rig.meter.read()
    assert reading.generation_w is None
    assert reading.import_w == pytest.approx(100_000)
    assert reading.frequency_hz == pytest.approx(50.0)


@pytest.mark.parametrize(("hz", "shown"), [(0.0, "0.0"), (math.nan, "nan"), (75.0, "75.0")])
async def test_meter_impossible_frequency_is_a_protocol_error(
    make_meter: MakeMeter, clock: Time, hz: float, shown: str
) -> None:
    rig = await make_meter()
    rig.sim.set_frequency(hz)
    clock.now += 1
    with pytest.raises(
        ProtocolError, match=f"meter-1: read: frequency_hz: impossible value {shown}"
    ):
        await rig.meter.read()


async def test_meter_faults_are_typed_errors_naming_the_points(make_meter: MakeMeter) -> None:
    rig = await make_meter()
    await rig.sim.set_fault(Fault.EXCEPTION)
    with pytest.raises(RejectedError, match=r"meter-1: read: .* reading import_kw, export_kw"):
        await rig.meter.read()
    await rig.sim.set_fault(Fault.STALL)
    with pytest.raises(DeviceTimeoutError, match=r"meter-1: read: no reply within 0.5 s"):
        await rig.meter.read()
    await rig.sim.set_fault(Fault.REFUSE)
    with pytest.raises(UnreachableError, match="meter-1"):
        await rig.meter.read()
    await rig.sim.set_fault(Fault.NONE)
    assert (await rig.meter.read()).import_w == pytest.approx(100_000)


async def test_meter_concurrent_reads_take_turns_on_one_link(make_meter: MakeMeter) -> None:
    rig = await make_meter()
    await rig.sim.set_fault(Fault.SLOW, slow_s=0.05)
    readings = await asyncio.gather(*(rig.meter.read() for _ in range(4)))
    assert [r.import_w for r in readings] == pytest.approx([100_000] * 4)
    assert rig.sim.peak_in_flight == 1  # embedded devices take one request at a time


# ---- temperature sensor ----


async def make_sensor(bench: Bench, value: list[float]) -> tuple[SimSensor, ModbusTemperature]:
    regmap = load_map("sensor-temp")
    sim = SimSensor("temp-c1", HOST, 0, regmap, temperature_c=lambda: value[0])
    await bench.serve(sim)
    return sim, ModbusTemperature("temp-c1", bench.link("temp-c1", sim), regmap)


async def test_sensor_reads_negative_tenths(bench: Bench) -> None:
    _, sensor = await make_sensor(bench, [-35.5])
    assert await sensor.read() == pytest.approx(-35.5)


async def test_sensor_disconnected_probe_code_is_a_protocol_error(bench: Bench) -> None:
    _, sensor = await make_sensor(bench, [-3276.8])
    with pytest.raises(ProtocolError, match="temp-c1: read: temperature_c: impossible value"):
        await sensor.read()


async def test_sensor_drop_then_a_new_connection_serves_again(bench: Bench) -> None:
    sim, sensor = await make_sensor(bench, [4.0])
    await sim.set_fault(Fault.DROP)
    for _ in range(DROP_AFTER):
        assert await sensor.read() == pytest.approx(4.0)
    with pytest.raises(
        UnreachableError, match=r"temp-c1: read: connection dropped .*temperature_c"
    ):
        await sensor.read()
    # Still dropping, but on a fresh connection: the link reconnects and is served again.
    assert await sensor.read() == pytest.approx(4.0)


async def test_sim_port_in_use_is_an_os_error(bench: Bench) -> None:
    first, _ = await make_sensor(bench, [4.0])
    second = SimSensor("temp-c2", HOST, first.port, load_map("sensor-temp"), temperature_c=float)
    with pytest.raises(OSError, match=f"temp-c2: cannot listen on {HOST}:{first.port}"):
        await second.start()
