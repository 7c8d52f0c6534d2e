"""Modbus TCP for PDUs, meters and sensors: the one module of the drivers that imports pymodbus.

pymodbus's defaults suit a script, not a control loop: timeout=3 s with retries=3 blocks a
call for about 12 s against a dead device, and its background reconnect races with a
connect made on demand (two sockets to a PDU that may accept only one or two). So each call
here has its own deadline, one request is in flight per link, pymodbus never reconnects by
itself, and a link that is down connects again on the next call, inside that call's
deadline. Every failure becomes a typed DriverError naming the device and the point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.errors import (
    DeviceTimeoutError,
    DriverError,
    ProtocolError,
    RejectedError,
    UnreachableError,
)
from drivers.modbus_map import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    Image,
    ReadRequest,
    Table,
)

# The names the Modbus spec gives its exception codes, for messages people read.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def quiet_pymodbus(level: int = logging.CRITICAL) -> None:
    """Silence pymodbus's own log lines unless the app configured that logger itself.

    pymodbus logs a WARNING for every failed connect and an ERROR for every unanswered
    request; here each of those is already a typed error that the supervisor logs once per
    health transition, so its lines would only repeat ours, every poll, for every device.
    """
    logger = logging.getLogger("pymodbus.logging")
    if logger.level == logging.NOTSET:
        logger.setLevel(level)


quiet_pymodbus()


class ModbusLink:
    """One Modbus TCP connection to one device (unit id `unit` behind host:port).

    `timeout_s` is how long one attempt waits (for the connection, or for a reply) and
    `retries` how often pymodbus resends a request that got no reply; a call as a whole
    (lock wait, connect, attempts) ends by `deadline_s`.
    """

    def __init__(
        self,
        device: str,
        host: str,
        port: int,
        *,
        unit: int = 1,
        timeout_s: float = 1.0,
        retries: int = 1,
    ) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.unit = unit
        self.timeout_s = timeout_s
        self.retries = retries
        self.deadline_s = timeout_s * (retries + 1)
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()  # embedded devices handle one request at a time
        self._lost: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def read(
        self, table: Table, address: int, count: int, *, what: str
    ) -> list[int] | list[bool]:
        """`count` registers (or bits) from `address`; `what` names the points, for errors."""
        limit = MAX_READ_BITS if table in BIT_TABLES else MAX_READ_REGISTERS
        if not 1 <= count <= limit:
            raise ValueError(f"{what}: a read of {count} from a {table} table (1..{limit})")
        where = f"{table} {address}+{count}"

        def call(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            if table == "coil":
                return client.read_coils(address, count=count, device_id=self.unit)
            if table == "discrete":
                return client.read_discrete_inputs(address, count=count, device_id=self.unit)
            if table == "holding":
                return client.read_holding_registers(address, count=count, device_id=self.unit)
            return client.read_input_registers(address, count=count, device_id=self.unit)

        reply = await self._call("read", call, f"reading {what} at {where}")
        if table in BIT_TABLES:
            bits = list(reply.bits)
            if len(bits) < count:  # pymodbus pads bits to whole bytes; fewer is a short reply
                raise ProtocolError(
                    self.device, "read", f"{len(bits)} of {count} bits reading {what} at {where}"
                )
            return [bool(b) for b in bits[:count]]
        registers = list(reply.registers)
        if len(registers) != count:
            raise ProtocolError(
                self.device,
                "read",
                f"{len(registers)} of {count} registers reading {what} at {where}",
            )
        return registers

    async def read_many(self, requests: Sequence[ReadRequest]) -> Image:
        """Every planned read, in order, into one image to decode points from."""
        image = Image()
        for request in requests:
            values = await self.read(
                request.table, request.address, request.count, what=request.what
            )
            image.put(request.table, request.address, values)
        return image

    async def write(
        self, table: Table, address: int, values: Sequence[int] | Sequence[bool], *, what: str
    ) -> None:
        """Write coils or holding registers (one value: the single-write function codes)."""
        if table not in ("coil", "holding") or not values:
            raise ValueError(f"{what}: cannot write {len(values)} value(s) to a {table} table")
        where = f"{table} {address}+{len(values)}"

        def call(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            if table == "coil":
                bits = [bool(v) for v in values]
                if len(bits) == 1:
                    return client.write_coil(address, bits[0], device_id=self.unit)
                return client.write_coils(address, bits, device_id=self.unit)
            registers = [int(v) for v in values]
            if len(registers) == 1:
                return client.write_register(address, registers[0], device_id=self.unit)
            return client.write_registers(address, registers, device_id=self.unit)

        await self._call("write", call, f"writing {what} at {where}")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()

    async def _call(
        self,
        op: str,
        call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
        doing: str,
    ) -> ModbusPDU:
        stage = ["waiting for the link"]
        try:
            async with asyncio.timeout(self.deadline_s), self._lock:
                reply = await self._attempt(op, call, doing, stage)
        except TimeoutError:
            # A reply that comes after the deadline would be taken for the next request's:
            # start that one on a fresh connection.
            await self.close()
            raise DeviceTimeoutError(
                self.device, op, f"no reply within {self.deadline_s:g} s ({stage[-1]}) {doing}"
            ) from None
        except DriverError:
            raise
        except (ModbusException, OSError) as err:
            await self.close()
            raise self._translated(err, op, doing) from None
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise RejectedError(
                self.device, op, f"Modbus exception {code} ({name}) {doing}", code=code
            )
        return reply

    async def _attempt(
        self,
        op: str,
        call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
        doing: str,
        stage: list[str],
    ) -> ModbusPDU:
        client = self._connection()
        if not client.connected:
            stage.append("connecting")
            if not await client.connect():
                raise UnreachableError(
                    self.device, op, f"no connection to {self.host}:{self.port} {doing}"
                )
        stage.append("waiting for the reply")
        reply = await self._exchange(call(client))
        if reply is None:
            raise UnreachableError(self.device, op, f"connection dropped before the reply {doing}")
        return reply

    def _translated(self, err: BaseException, op: str, doing: str) -> DriverError:
        if isinstance(err, (ConnectionException, OSError)):
            return UnreachableError(self.device, op, f"{_reason(err)} {doing}")
        if isinstance(err, ModbusIOException) and "No response" in str(err):
            # pymodbus gave up on its own before our deadline did.
            return DeviceTimeoutError(self.device, op, f"no reply {doing}")
        return ProtocolError(self.device, op, f"{_reason(err)} {doing}")

    async def _exchange(self, request: Awaitable[ModbusPDU]) -> ModbusPDU | None:
        """The reply, or None at once if the connection drops meanwhile: pymodbus would
        otherwise wait out every attempt's timeout for a reply that cannot come."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        self._lost = lost
        task: asyncio.Future[ModbusPDU] = asyncio.ensure_future(request)
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._lost = None
            if not task.done():
                task.cancel()
                task.add_done_callback(_consume)
        if not task.done():
            return None
        return task.result()

    def _connection(self) -> AsyncModbusTcpClient:
        # Made on first use: pymodbus binds a client to the running loop when it is built.
        if self._client is None:
            self._client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                timeout=self.timeout_s,
                retries=self.retries,
                reconnect_delay=0,  # no background reconnect; the next call connects
                trace_connect=self._on_connect,
            )
        return self._client

    def _on_connect(self, up: bool) -> None:
        lost = self._lost
        if not up and lost is not None and not lost.done():
            lost.set_result(None)


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    text = str(err).removeprefix("Modbus Error: ").strip()
    return text or type(err).__name__


def _consume(task: asyncio.Future[ModbusPDU]) -> None:
    # A request abandoned after a drop or a deadline: its outcome no longer matters.
    with suppress(asyncio.CancelledError, Exception):
        task.result()


__all__ = ["EXCEPTION_NAMES", "ModbusLink", "quiet_pymodbus"]
