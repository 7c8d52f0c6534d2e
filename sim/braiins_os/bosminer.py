"""BOSminer's CGMiner-style API on 4028: the replies pyasic reads is_mining, uptime and
errors from (its factory identifies the firmware and model by them), and pause/resume as
legacy BOSminer offers them.
"""

from __future__ import annotations

from typing import Any

from sim.braiins_os.device import FAN_MAX_RPM, FANS, BraiinsDevice
from sim.cgminer_server import CODE_INVALID_COMMAND, Reply

BOSMINER_VERSION = "0.9.0-3c4b8a5f"
CODE_VERSION = 22  # cgminer api.c message codes
CODE_SUMMARY = 11
CODE_DEVS = 9
CODE_DEVDETAILS = 69
CODE_FANS = 202  # (inferred) as LuxOS numbers its extensions
CODE_TEMPS = 201
CODE_TUNERSTATUS = 200  # (inferred)
CODE_PAUSE = 203  # (inferred)
CODE_RESUME = 204  # (inferred)


class BosminerApi:
    """The 4028 replies pyasic reads; pause/resume as legacy BOSminer offers them."""

    joinable = frozenset(
        {"version", "summary", "devs", "devdetails", "tunerstatus", "fans", "temps"}
    )

    def __init__(self, device: BraiinsDevice) -> None:
        self.device = device

    def handle(self, command: str, parameter: str | None) -> Reply:
        del parameter
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None or command.startswith("_"):
            return self.error(CODE_INVALID_COMMAND, "Invalid command")
        result: Reply = handler()
        return result

    def error(self, code: int, msg: str) -> Reply:
        return {"STATUS": [self._status(code, msg, "E")], "id": 1}

    def _cmd_version(self) -> Reply:
        return self._ok(
            CODE_VERSION,
            "BOSminer versions",
            "VERSION",
            [{"BOSminer": BOSMINER_VERSION, "API": "3.7"}],
        )

    def _cmd_devdetails(self) -> Reply:
        model = f"Bitmain {self.device.model_name()}"  # the factory strips "Bitmain "
        details = [
            {
                "DEVDETAILS": i,
                "Name": "BC5",
                "ID": i,
                "Driver": "bosminer",
                "Model": model,
                "Chips": 126,
            }
            for i in range(self.device.physics.model.boards)
        ]
        return self._ok(CODE_DEVDETAILS, "Device Details", "DEVDETAILS", details)

    def _cmd_summary(self) -> Reply:
        mhs = self.device.hashrate_ghs() * 1000
        summary = {
            "Elapsed": self.device.uptime_s(),
            "MHS 1m": mhs,
            "MHS 5s": mhs,
            "MHS 5m": mhs,
            "MHS av": mhs,
            "Accepted": self.device.accepted,
            "Rejected": 0,
            "Hardware Errors": 0,
        }
        return self._ok(CODE_SUMMARY, "Summary", "SUMMARY", [summary])

    def _cmd_devs(self) -> Reply:
        d = self.device
        mhs = d.hashrate_ghs() * 1000 / d.physics.model.boards
        devs = [
            {
                "ASC": i,
                "Name": "BC5",
                "ID": i,
                "Enabled": "Y",
                "Status": "Alive",
                "Temperature": temp,
                "MHS 5s": mhs,
                "MHS 1m": mhs,
                "MHS av": mhs,
            }
            for i, temp in enumerate(d.board_temps_c())
        ]
        return self._ok(CODE_DEVS, f"{len(devs)} ASC(s)", "DEVS", devs)

    def _cmd_tunerstatus(self) -> Reply:
        d = self.device
        chains = [
            {
                "HashchainIndex": i,
                "Status": "Stable" if not d.tuning() else "Tuning individual chips",
            }
            for i in range(d.physics.model.boards)
        ]
        status = {
            "PowerLimit": d.target_w,
            "ApproximateMinerPowerConsumption": d.power_w(),
            "TunerChainStatus": chains,
        }
        return self._ok(CODE_TUNERSTATUS, "Tuner Status", "TUNERSTATUS", [status])

    def _cmd_fans(self) -> Reply:
        ratio = self.device.fan_ratio(self.device.now())
        fans = [
            {"FAN": i, "ID": i, "RPM": round(ratio * FAN_MAX_RPM), "Speed": round(ratio * 100)}
            for i in range(FANS)
        ]
        return self._ok(CODE_FANS, f"{FANS} Fan(s)", "FANS", fans)

    def _cmd_temps(self) -> Reply:
        d = self.device
        temps = [
            {"TEMP": i, "ID": i, "Board": board, "Chip": chip}
            for i, (board, chip) in enumerate(zip(d.board_temps_c(), d.chip_temps_c(), strict=True))
        ]
        return self._ok(CODE_TEMPS, f"{len(temps)} Temp(s)", "TEMPS", temps)

    def _cmd_pause(self) -> Reply:
        self.device.pause()
        return self._ok(CODE_PAUSE, "Pause", "PAUSE", [{"PAUSE": True}])

    def _cmd_resume(self) -> Reply:
        self.device.resume()
        return self._ok(CODE_RESUME, "Resume", "RESUME", [{"RESUME": True}])

    def _status(self, code: int, msg: str, status: str = "S") -> dict[str, Any]:
        return {
            "STATUS": status,
            "When": int(self.device.now()),
            "Code": code,
            "Msg": msg,
            "Description": f"BOSminer bosminer-plus-tuner {BOSMINER_VERSION}",
        }

    def _ok(self, code: int, msg: str, section: str, data: list[dict[str, Any]]) -> Reply:
        return {"STATUS": [self._status(code, msg)], section: data, "id": 1}
