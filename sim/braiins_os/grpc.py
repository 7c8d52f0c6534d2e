"""The Braiins OS+ gRPC endpoint (plaintext HTTP/2, spec.web_port, else 50051): exactly the
calls pyasic 0.79.0 makes for stop_mining, resume_mining, set_power_limit and get_data.
Login sends the token in the response's initial metadata `authorization`, where pyasic
reads it. grpclib serves the framing; messages are encoded in sim.braiins_os.protobuf.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from sim.braiins_os.device import (
    API_VERSION,
    BOS_VERSION,
    FAN_MAX_RPM,
    FANS,
    TEMPERATURES,
    BraiinsDevice,
)
from sim.braiins_os.protobuf import (
    pb_bool,
    pb_bytes,
    pb_decode,
    pb_double,
    pb_int,
    pb_message,
    pb_optional_uint,
    pb_str,
    pb_string,
    pb_true,
    pb_uint,
)
from sim.faults import Fault, FaultState

STALL_HOLD_S = 60.0  # a stalled call is held this long, then answered UNAVAILABLE


class RawCodec(CodecBase):
    """Messages pass through as bytes; the handlers encode and decode them by hand."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:  # noqa: ANN401 - codec API
        del message_type
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:  # noqa: ANN401 - codec API
        del message_type
        return data


GrpcReply = Callable[[bytes], bytes]
V1 = "/braiins.bos.v1."


class GrpcSimServer:
    """The BOS+ gRPC endpoint pyasic drives, with refuse/stall/slow/garbage/lie/expiry."""

    def __init__(
        self,
        host: str,
        port: int,
        device: BraiinsDevice,
        fault: FaultState,
        *,
        rng: random.Random,
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.device = device
        self.fault = fault
        self.requests = 0
        self._rng = rng
        self._observer = observer
        self._server: Server | None = None
        private: dict[str, GrpcReply] = {
            "ActionsService/PauseMining": self._pause,
            "ActionsService/ResumeMining": self._resume,
            "ActionsService/GetLocateDeviceStatus": lambda _: b"",
            "PerformanceService/SetPowerTarget": self._set_power_target,
            "PerformanceService/GetActivePerformanceMode": self._performance_mode,
            "MinerService/GetMinerStats": self._stats,
            "MinerService/GetMinerDetails": self._details,
            "MinerService/GetHashboards": self._hashboards,
            "CoolingService/GetCoolingState": self._cooling_state,
            "ConfigurationService/GetMinerConfiguration": self._configuration,
            "PoolService/GetPoolGroups": self._pool_groups,
        }
        self._mapping: dict[str, Handler] = {
            "/braiins.bos.ApiVersionService/GetApiVersion": self._handler(
                "GetApiVersion", self._api_version, private=False
            ),
            f"{V1}AuthenticationService/Login": Handler(
                self._login, Cardinality.UNARY_UNARY, bytes, bytes
            ),
        }
        for path, reply in private.items():
            self._mapping[V1 + path] = self._handler(path.split("/")[1], reply, private=True)

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping

    async def start(self) -> None:
        if self._server is not None or self.fault.mode is Fault.REFUSE:
            return
        server = Server([self], codec=RawCodec())
        await server.start(self.host, self.port, reuse_address=True)
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def set_fault(self, mode: Fault, *, slow_s: float | None = None) -> None:
        self.fault.mode = mode
        if slow_s is not None:
            self.fault.slow_s = slow_s
        if mode is Fault.REFUSE:
            await self.stop()
        else:
            await self.start()

    # -- plumbing --------------------------------------------------------------------------

    def _handler(self, name: str, reply: GrpcReply, *, private: bool) -> Handler:
        async def handle(stream: Stream[bytes, bytes]) -> None:
            request = await self._receive(stream, name)
            if private:
                token = stream.metadata.get("authorization") if stream.metadata else None
                if not self.device.authorised(token if isinstance(token, str) else None):
                    raise GRPCError(
                        Status.UNAUTHENTICATED, "Missing or invalid authentication token"
                    )
            try:
                body = reply(request)
            except (ValueError, UnicodeDecodeError) as err:
                raise GRPCError(Status.INVALID_ARGUMENT, f"invalid request: {err}") from None
            await stream.send_message(self._garble(body))

        return Handler(handle, Cardinality.UNARY_UNARY, bytes, bytes)

    async def _receive(self, stream: Stream[bytes, bytes], name: str) -> bytes:
        self.requests += 1
        if self._observer is not None:
            self._observer(f"grpc {name}")
        request = await stream.recv_message() or b""
        if self.fault.mode is Fault.STALL:
            await asyncio.sleep(STALL_HOLD_S)
            raise GRPCError(Status.UNAVAILABLE, "stalled")
        if self.fault.mode is Fault.SLOW:
            await asyncio.sleep(self.fault.slow_s)
        return request

    def _garble(self, body: bytes) -> bytes:
        if self.fault.mode is not Fault.GARBAGE:
            return body
        # Valid gRPC framing around bytes that are no protobuf message (0xff: field 31, wire 7).
        return b"\xff" + bytes(
            self._rng.randrange(0, 256) for _ in range(self._rng.randrange(8, 40))
        )

    async def _login(self, stream: Stream[bytes, bytes]) -> None:
        request = await self._receive(stream, "Login")
        try:
            fields = pb_decode(request)
            username, password = pb_string(fields, 1), pb_string(fields, 2)
        except (ValueError, UnicodeDecodeError) as err:
            raise GRPCError(Status.INVALID_ARGUMENT, f"invalid request: {err}") from None
        token = self.device.login(username, password)
        if token is None:
            raise GRPCError(Status.UNAUTHENTICATED, "Bad credentials")
        # pyasic reads the token from here only, not from LoginResponse.token.
        await stream.send_initial_metadata(metadata={"authorization": token})
        body = pb_str(1, token) + pb_uint(2, self.device.timeout_s)
        await stream.send_message(self._garble(body))

    # -- messages (field numbers: bos-plus-api proto/bos/v1/*.proto) ------------------------

    def _api_version(self, _: bytes) -> bytes:
        major, minor, patch = API_VERSION
        return pb_uint(1, major) + pb_uint(2, minor) + pb_uint(3, patch)

    def _pause(self, _: bytes) -> bytes:
        return pb_bool(1, self.device.pause())  # PauseMiningResponse.already_paused

    def _resume(self, _: bytes) -> bytes:
        return pb_bool(1, self.device.resume())  # ResumeMiningResponse.already_mining

    def _set_power_target(self, request: bytes) -> bytes:
        fields = pb_decode(request)  # save_action=1 is accepted and ignored: always applied
        watt = pb_int(pb_decode(pb_message(fields, 2)), 1)
        error = self.device.set_power_target(watt)
        if error is not None:
            raise GRPCError(Status.INVALID_ARGUMENT, error)
        return pb_bytes(1, pb_uint(1, watt))  # SetPowerTargetResponse.power_target

    def _performance_mode(self, _: bytes) -> bytes:
        power = pb_bytes(1, pb_uint(1, self.device.target_w))  # PowerTargetMode.power_target
        return pb_bytes(2, pb_bytes(1, power))  # PerformanceMode.tuner_mode.power_target

    def _stats(self, _: bytes) -> bytes:
        d = self.device
        power = pb_bytes(1, pb_uint(1, d.power_w()))
        ghs = d.hashrate_ghs()
        efficiency = pb_bytes(2, pb_double(1, d.power_w() / (ghs / 1000) if ghs else 0.0))
        return (
            pb_bytes(1, pb_uint(1, d.accepted))  # pool_stats.accepted_shares
            + pb_bytes(2, _pb_work_stats(ghs, d.physics.profile.hashrate_ths * 1000))
            + pb_bytes(3, power + efficiency)  # power_stats
        )

    def _details(self, _: bytes) -> bytes:
        d = self.device
        name = d.model_name()
        identity = pb_uint(1, 1) + pb_str(3, name) + pb_str(4, name)  # brand ANTMINER
        version = pb_str(1, BOS_VERSION) + pb_str(2, "25.07") + pb_true(3)
        uptime = d.uptime_s()
        return b"".join(
            (
                pb_str(1, d.serial),
                pb_bytes(2, identity),
                pb_uint(3, 3),  # platform AM3_BBB
                pb_uint(4, 4),  # bos_mode NAND
                pb_bytes(5, version),
                pb_str(6, f"bos-{d.serial[-6:].lower()}"),
                pb_str(7, d.mac),
                pb_uint(8, uptime),
                pb_bytes(9, pb_double(1, d.physics.model.hashrate_ths * 1000)),
                pb_uint(10, uptime),
                pb_uint(11, uptime),
                pb_uint(12, d.status()),
                pb_str(13, "5.10.0"),
                pb_str(16, d.serial),
            )
        )

    def _hashboards(self, _: bytes) -> bytes:
        d = self.device
        boards = d.physics.model.boards
        per_board = d.hashrate_ghs() / boards
        nominal = d.physics.profile.hashrate_ths * 1000 / boards
        out = b""
        for i, (board, chip) in enumerate(zip(d.board_temps_c(), d.chip_temps_c(), strict=True)):
            sensor = pb_uint(2, 1) + pb_bytes(3, pb_double(1, chip))  # location CHIP
            out += pb_bytes(
                1,
                pb_str(1, str(i + 1))
                + pb_true(2)
                + pb_bytes(3, pb_uint(1, 126))  # chips_count: UInt32Value
                + pb_bytes(6, sensor)
                + pb_bytes(7, pb_double(1, board))
                + pb_bytes(8, _pb_work_stats(per_board, nominal)),
            )
        return out

    def _cooling_state(self, _: bytes) -> bytes:
        d = self.device
        ratio = d.fan_ratio(d.now())
        fans = b"".join(
            pb_bytes(
                1,
                pb_optional_uint(1, i)  # position
                + pb_uint(2, round(ratio * FAN_MAX_RPM))
                + pb_double(3, ratio),
            )
            for i in range(FANS)
        )
        hottest = pb_uint(2, 1) + pb_bytes(3, pb_double(1, max(d.chip_temps_c())))
        return fans + pb_bytes(2, hottest)

    def _configuration(self, _: bytes) -> bytes:
        d = self.device
        pools = b"".join(
            pb_bytes(
                5,
                pb_str(1, str(i + 1))
                + pb_str(2, pool.url)
                + pb_str(3, pool.user)
                + pb_bytes(4, b"")  # password: optional, present and empty
                + pb_bool(5, pool.enabled),
            )
            for i, pool in enumerate(d.pools.get())
        )
        group = pb_str(1, "1") + pb_str(2, "Default") + pb_bytes(3, pb_uint(1, 1)) + pools
        temps = b"".join(
            pb_bytes(n, pb_double(1, TEMPERATURES[key]["degree_c"]))
            for n, key in (
                (1, "target_temperature"),
                (2, "hot_temperature"),
                (3, "dangerous_temperature"),
            )
        )
        tuner = pb_true(1) + pb_uint(2, 1) + pb_bytes(3, pb_uint(1, d.target_w))
        ramping = pb_uint(4, d.quick_up_s) + pb_uint(5, d.quick_down_s)
        return (
            pb_bytes(1, group)
            + pb_bytes(2, pb_bytes(2, temps))  # temperature.auto
            + pb_bytes(3, tuner)
            + pb_bytes(5, ramping)  # hashboard_config quick ramping (API >= 1.7.0)
        )

    def _pool_groups(self, _: bytes) -> bytes:
        d = self.device
        active = None if d.paused else d.pools.active()
        pools = b"".join(
            pb_bytes(
                4,
                pb_str(1, str(i + 1))
                + pb_str(2, pool.url)
                + pb_str(3, pool.user)
                + pb_bool(4, pool.enabled)
                + pb_bool(5, pool.enabled and pool.alive)
                + pb_bool(6, i == active)
                + pb_bytes(7, pb_uint(1, d.accepted if i == active else 0)),
            )
            for i, pool in enumerate(d.pools.get())
        )
        group = pb_str(1, "Default") + pb_bytes(2, pb_uint(1, 1)) + pools
        return pb_bytes(1, group)


def _pb_work_stats(ghs: float, nominal_ghs: float) -> bytes:
    rate = pb_double(1, ghs)
    # RealHashrate last_5_s..last_1_m, since_restart: present even at 0 (pyasic needs last_5_s)
    real = b"".join(pb_bytes(n, rate) for n in (1, 2, 3, 4, 10))
    return pb_bytes(1, real) + pb_bytes(2, pb_double(1, nominal_ghs))
