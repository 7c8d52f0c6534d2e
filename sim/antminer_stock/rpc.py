"""A stock Antminer's CGMiner API on 4028: read-only, as the stock `api-groups
"A:stats:pools:devs:summary:version"` and `api-allow "A:0/0,W:*"` make it: any other known
command answers E 45 "Access denied", an unknown one E 14. While bmminer restarts, nothing
listens: connections are refused.

Reply shapes follow captures from real units where they exist (asic-rs: S21 XP Hyd and S23
Hyd `stats`; Block's S21 fixtures; pyasic and asic-rs issues) and the decompiled S19 Pro
bmminer otherwise. What no source shows is marked (inferred).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from sim.antminer_stock.firmware import MODE_SLEEP, READ_COMMANDS, StockFirmware
from sim.cgminer_server import (
    CODE_ACCESS_DENIED,
    CODE_INVALID_COMMAND,
    CgminerServer,
    Reply,
    _Connection,
)
from sim.faults import Fault, FaultState
from sim.missing import Missing

DESCRIPTION = "cgminer 1.0.0"  # STATUS Description on S19, S21 and S21 XP Hyd
CODE_POOLS = 7
CODE_DEVS = 9
CODE_SUMMARY = 11
CODE_VERSION = 22
CODE_STATS = 70

# bitmaintech/cgminer api.c's command table: known, so denied (45) rather than invalid (14).
KNOWN_COMMANDS = READ_COMMANDS | frozenset(
    {
        "config", "edevs", "estats", "devdetails", "switchpool", "addpool", "poolpriority",
        "poolquota", "enablepool", "disablepool", "removepool", "save", "quit", "restart",
        "privileged", "notify", "check", "failover-only", "coin", "debug", "setconfig",
        "usbstats", "zero", "hotplug", "asc", "ascenable", "ascdisable", "ascidentify",
        "ascset", "asccount", "pga", "pgaenable", "pgadisable", "pgaidentify", "pgaset",
        "pgacount", "lcd", "lockstats",
    }
)  # fmt: skip


class RpcApi(StockFirmware):
    """The CGMiner API replies of group A over the firmware state."""

    def handle(self, command: str, parameter: str | None) -> Reply:
        del parameter  # no read command of group A takes one
        if command not in KNOWN_COMMANDS:
            return self.error(CODE_INVALID_COMMAND, "Invalid command")
        if command not in self.allowed:
            return self.error(CODE_ACCESS_DENIED, f"Access denied to '{command}' command")
        result: Reply = getattr(self, f"_rpc_{command}")()
        return result

    def error(self, code: int, msg: str) -> Reply:
        return {"STATUS": [self._status(code, msg, "E")], "id": 1}

    def _rpc_version(self) -> Reply:
        version = {
            "BMMiner": "1.0.0",
            "API": "3.1",
            "Miner": self.build.miner,
            "CompileTime": self.build.compile_time,
            "Type": self.physics.model.name,
        }
        return self._ok(CODE_VERSION, "CGMiner versions", "VERSION", [version])

    def _rpc_summary(self) -> Reply:
        now = self._now()
        ghs = self.physics.hashrate_ths(now) * 1000
        summary = {
            "Elapsed": int(now - self._started),
            "GHS 5s": f"{ghs:.2f}",  # a string on the S19 Pro bmminer (api_add_string)
            "GHS av": round(ghs, 2),
            "Found Blocks": 0,
            "Getworks": 0,
            "Accepted": 0,
            "Rejected": 0,
            "Hardware Errors": 0,
            "Utility": 0.0,
            "Discarded": 0,
            "Stale": 0,
            "Get Failures": 0,
            "Local Work": 0,
            "Remote Failures": 0,
            "Network Blocks": 0,
            "Total MH": 0.0,
            "Work Utility": 0.0,
            "Difficulty Accepted": 0.0,
            "Difficulty Rejected": 0.0,
            "Difficulty Stale": 0.0,
            "Best Share": 0,
            "Device Hardware%": 0.0,
            "Device Rejected%": 0.0,
            "Pool Rejected%": 0.0,
            "Pool Stale%": 0.0,
            "Last getwork": int(now),
        }
        return self._ok(CODE_SUMMARY, "Summary", "SUMMARY", [summary])

    def _rpc_stats(self) -> Reply:
        now = self._now()
        chains = self._chains(now)
        ghs = sum(c["rate"] for c in chains)
        ideal = self.physics.profile.hashrate_ths * 1000
        fan = self._fan_rpm()
        board: dict[str, Any] = {
            "STATS": 0,
            "ID": "BTM_SOC0",
            "Elapsed": int(now - self._started),
            "Calls": 0,
            "Wait": 0,
            "Max": 0,
            "Min": 99999999,
            "GHS 5s": round(ghs, 2),
            "GHS av": round(ghs, 2),
            "rate_30m": round(ghs, 2),
            "Mode": self.runtime_mode,
            "miner_count": len(chains),
            "frequency": chains[0]["freq"] if chains else 0,
            "fan_num": 4,
        }
        board.update({f"fan{i}": fan for i in range(1, 5)})
        board["temp_num"] = len(chains)
        for i, chain in enumerate(chains, start=1):
            board[f"temp{i}"] = max(chain["pcb"])
            board[f"temp2_{i}"] = max(chain["chip"])
        for key in ("pcb", "chip", "pic"):
            for i in range(1, 5):
                values = chains[i - 1][key] if i <= len(chains) else [0, 0, 0, 0]
                board[f"temp_{key}{i}"] = "-".join(str(v) for v in values)
        board.update(
            {
                "total_rateideal": round(ideal, 2),
                "rate_unit": "GH",
                "total_freqavg": chains[0]["freq"] if chains else 0,
                "total_acn": sum(c["acn"] for c in chains),
                "total rate": round(ghs, 2),
                "temp_max": max((max(c["chip"]) for c in chains), default=0),
                "no_matching_work": 0,
            }
        )
        for i in range(1, 5):
            slot = chains[i - 1] if i <= len(chains) else None
            board[f"chain_acn{i}"] = slot["acn"] if slot else 0
            board[f"chain_acs{i}"] = _acs(slot["acn"]) if slot else ""
        for i in range(1, 5):
            board[f"chain_hw{i}"] = 0
        for i in range(1, 5):
            slot = chains[i - 1] if i <= len(chains) else None
            board[f"chain_rate{i}"] = f"{slot['rate']:.2f}" if slot else ""
        for i in range(1, 5):
            board[f"freq{i}"] = chains[i - 1]["freq"] if i <= len(chains) else 0
        board["miner_version"] = self.build.miner
        board["miner_id"] = self.serial.lower()
        header = {
            "BMMiner": "1.0.0",
            "Miner": self.build.miner,
            "CompileTime": self.build.compile_time,
            "Type": self.physics.model.name,
        }
        return self._ok(CODE_STATS, "CGMiner stats", "STATS", [header, board])

    def _rpc_pools(self) -> Reply:
        pools = []
        for i, pool in enumerate(self.conf["pools"]):
            configured = bool(pool["url"])
            pools.append(
                {
                    "POOL": i,
                    "URL": pool["url"],
                    "Status": "Alive" if configured else "Deed",  # sic, Block's S21 capture
                    "Priority": i,
                    "Quota": 1,
                    "Long Poll": "N",
                    "Getworks": 0,
                    "Accepted": 0,
                    "Rejected": 0,
                    "Discarded": 0,
                    "Stale": 0,
                    "Get Failures": 0,
                    "Remote Failures": 0,
                    "User": pool["user"],
                    "Last Share Time": "0",
                    "Diff": "",
                    "Diff1 Shares": 0,
                    "Proxy Type": "",
                    "Proxy": "",
                    "Difficulty Accepted": 0.0,
                    "Difficulty Rejected": 0.0,
                    "Difficulty Stale": 0.0,
                    "Last Share Difficulty": 0.0,
                    "Has Stratum": configured,
                    "Stratum Active": configured and i == 0 and self.runtime_mode != MODE_SLEEP,
                    "Stratum URL": pool["url"].split("//")[-1].split(":")[0],
                    "Has GBT": False,
                    "Best Share": 0.0,
                    "Pool Rejected%": 0.0,
                    "Pool Stale%%": 0.0,  # sic
                }
            )
        return self._ok(CODE_POOLS, f"{len(pools)} Pool(s)", "POOLS", pools)

    def _rpc_devs(self) -> Reply:
        now = self._now()
        mhs = self.physics.hashrate_ths(now) * 1e6
        temps = self._temps(now)
        dev = {
            "ASC": 0,
            "Name": "BTM_SOC",
            "ID": 0,
            "Enabled": "Y",
            "Status": "Alive",
            "Temperature": round(max(temps, default=0.0), 1),
            "MHS av": round(mhs, 2),
            "MHS 5s": round(mhs, 2),
            "Accepted": 0,
            "Rejected": 0,
            "Hardware Errors": 0,
            "Utility": 0.0,
            "Last Share Pool": 0,
            "Last Share Time": int(now),
            "Total MH": 0.0,
            "Diff1 Work": 0,
            "Difficulty Accepted": 0,
            "Difficulty Rejected": 0,
            "Last Share Difficulty": 0,
            "Last Valid Work": int(now),
            "Device Hardware%": 0.0,
            "Device Rejected%": 0.0,
            "Device Elapsed": int(now - self._started),
        }
        return self._ok(CODE_DEVS, "1 ASC(s)", "DEVS", [dev])

    def _status(self, code: int, msg: str, status: str = "S") -> dict[str, Any]:
        return {
            "STATUS": status,
            "When": int(self._now()),
            "Code": code,
            "Msg": msg,
            "Description": DESCRIPTION,
        }

    def _ok(self, code: int, msg: str, section: str, data: list[dict[str, Any]]) -> Reply:
        return {"STATUS": [self._status(code, msg)], section: data, "id": 1}


class StockRpcServer(CgminerServer):
    """The CGMiner API server, refusing connections while the mining process restarts."""

    def __init__(
        self,
        host: str,
        port: int,
        device: RpcApi,
        fault: FaultState,
        *,
        rng: random.Random | None = None,
        observer: Callable[[str], None] | None = None,
        missing: Missing | None = None,
    ) -> None:
        super().__init__(host, port, device, fault, rng=rng, observer=observer, missing=missing)
        self.stock = device

    async def start(self) -> None:
        if self._server is None and self.fault.mode is not Fault.REFUSE:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _RpcConnection(self), self.host, self.port, reuse_address=True, backlog=256
            )


class _RpcConnection(_Connection):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        device = cast("StockRpcServer", self._server).stock
        device.in_flight += 1
        device.peak_in_flight = max(device.peak_in_flight, device.in_flight)
        if device.restarting():
            device.refused_connections += 1
            # Nothing listens while bmminer restarts: reset at once (SO_LINGER 0 sends an
            # RST), which a client sees as the refused connection real units give.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            cast("asyncio.Transport", transport).abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cast("StockRpcServer", self._server).stock.in_flight -= 1


def _acs(chips: int) -> str:
    """Chip status as bmminer prints it: " oooooooo oooooooo ..." (one o per good chip)."""
    return "".join(" " + "o" * min(8, chips - i) for i in range(0, chips, 8))
