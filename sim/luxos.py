"""A simulated LuxOS (LUXminer) miner: its CGMiner-flavoured API over its physics.

Reply shapes follow docs.luxor.tech where they are documented (logon 316, session 319,
curtail 335, profileset 321, atm 339, atmset 340, version 22, fans 202, temps 201) and
otherwise what pyasic and Luxor's own `luxos` client read. Codes not documented anywhere
we could find are marked (inferred) below; they are chosen to be plausible, not copied.

Sessions: one at a time, 60 s idle expiry refreshed on use, a second logon answers 402
"Another session is active". Sleep keeps the control board up and persists until wakeup.
"""

from __future__ import annotations

import random
import string
from collections import deque
from collections.abc import Callable
from typing import Any

from drivers.types import Mode
from sim.cgminer_server import CODE_INVALID_COMMAND, CgminerServer, Reply
from sim.families import BuildContext, Built, Family, SimMinerSpec
from sim.faults import FaultState
from sim.physics import MinerModel, MinerPhysics, antminer_class
from sim.pools import SimPools, default_pools

SESSION_IDLE_S = 60.0  # docs.luxor.tech/firmware/api/sessions
VERSION = "2024.11.12.201504-7c3b9d1e"
DESCRIPTION = f"LUXminer {VERSION}"

CODE_VERSION = 22
CODE_SUMMARY = 11  # cgminer convention (inferred for LuxOS)
CODE_POOLS = 7  # cgminer convention (inferred)
CODE_DEVS = 9  # cgminer convention (inferred)
CODE_STATS = 70  # cgminer convention (inferred)
CODE_CONFIG = 33  # cgminer convention (inferred)
CODE_FANS = 202
CODE_TEMPS = 201
CODE_POWER = 338  # (inferred) no public source gives the power reply's code
CODE_EVENTS = 341  # (inferred)
CODE_PROFILES = 320  # (inferred)
CODE_PROFILESET = 321
CODE_LOGON = 316
CODE_LOGOFF = 317  # (inferred)
CODE_SESSION = 319
CODE_TEMPCTRL = 329  # (inferred)
CODE_GROUPS = 324
CODE_CURTAIL = 335
CODE_ATM = 339
CODE_ATMSET = 340
CODE_LIMITS = 343  # (inferred)
CODE_SESSION_ACTIVE = 402  # Luxor's luxos client: "Another session is active"
CODE_INVALID_SESSION = 401  # (inferred) Msg "Invalid session_id" as clients match it
CODE_MISSING_PARAM = 400  # (inferred)

READ_COMMANDS = frozenset(
    {
        "version",
        "config",
        "summary",
        "stats",
        "power",
        "events",
        "profiles",
        "pools",
        "fans",
        "tempctrl",
        "temps",
        "groups",
        "devs",
        "devdetails",
        "atm",
        "limits",
        "session",
    }
)


class LuxosDevice:
    """One LuxOS miner's API state over its physics."""

    joinable = READ_COMMANDS

    def __init__(
        self,
        physics: MinerPhysics,
        fault: FaultState,
        *,
        time_fn: Callable[[], float],
        rng: random.Random,
        serial: str,
        mac: str,
        pools: SimPools | None = None,
    ) -> None:
        self.physics = physics
        self.fault = fault
        self.pools = pools or SimPools()
        self.pools.preset(default_pools(serial))
        self._now = time_fn
        self._rng = rng
        self.serial = serial
        self.mac = mac
        self.session_id = ""
        self._session_used = 0.0
        self._started = time_fn()
        self._sleep_since: float | None = None if physics.mode is Mode.MINING else time_fn()
        self.atm_enabled = True
        self.accepted = 0
        self.commands: deque[str] = deque(maxlen=256)  # writes carried out, for tests

    def reset(self, mode: Mode) -> None:
        """Simulator control: drop any session and put the miner in `mode` at once."""
        now = self._now()
        self.physics.force(mode, now)
        self.session_id = ""
        self._sleep_since = None if mode is Mode.MINING else now

    # -- the API ---------------------------------------------------------------------------

    def handle(self, command: str, parameter: str | None) -> Reply:
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None or command.startswith("_"):
            return self.error(CODE_INVALID_COMMAND, "Invalid command")
        result: Reply = handler(parameter)
        return result

    def error(self, code: int, msg: str) -> Reply:
        return {"STATUS": [self._status(code, msg, "E")], "id": 1}

    # -- reads -----------------------------------------------------------------------------

    def _cmd_version(self, _: str | None) -> Reply:
        return self._ok(
            CODE_VERSION,
            "LUXminer versions",
            "VERSION",
            [
                {
                    "API": "3.7",
                    "CompileTime": "Tue Nov 12 20:15:04 UTC 2024",
                    "LUXminer": VERSION,
                    "Miner": VERSION.split("-", 1)[0],
                    "Type": self.physics.model.name,
                }
            ],
        )

    def _cmd_config(self, _: str | None) -> Reply:
        return self._ok(
            CODE_CONFIG,
            "1 ASC(s) + 0 PGA(s) + 0 ASC Chain(s)",
            "CONFIG",
            [
                {
                    "ASC Count": self.physics.model.boards,
                    "ControlBoardType": "XilinxZynq7007",
                    "Hostname": f"luxos-{self.serial[-6:]}",
                    "IsAtmEnabled": self.atm_enabled,
                    "IsTuning": False,
                    "MACAddr": self.mac,
                    "Model": self.physics.model.name,
                    "OS": "Linux",
                    "Profile": self.physics.profile.name,
                    "ProfileStep": "0",
                    "RedLed": "off",
                    "SerialNumber": self.serial,
                    "SystemStatus": "normal",
                }
            ],
        )

    def _cmd_summary(self, _: str | None) -> Reply:
        now = self._now()
        ghs = self.physics.hashrate_ths(now) * 1000
        elapsed = int(now - self._started)
        return self._ok(
            CODE_SUMMARY,
            "Summary",
            "SUMMARY",
            [
                {
                    "Accepted": self.accepted,
                    "Elapsed": elapsed,
                    "GHS 5s": round(ghs, 2),
                    "GHS av": round(ghs, 2),
                    "Hardware Errors": 0,
                    "Rejected": 0,
                    "Stale": 0,
                    "Best Share": 0,
                }
            ],
        )

    def _cmd_stats(self, _: str | None) -> Reply:
        now = self._now()
        self.physics.advance(now)
        per_board = self.physics.hashrate_ths(now) * 1000 / self.physics.model.boards
        ideal = self.physics.profile.hashrate_ths * 1000
        board: dict[str, Any] = {
            "Elapsed": int(now - self._started),
            "GHS 5s": round(per_board * 3, 2),
            "total_rateideal": round(ideal, 2),
            "rate_unit": "GH",
            "Calls": 0,
        }
        for i, temp in enumerate(self.physics.board_temps_c, start=1):
            pcb = round(temp)
            board[f"chain_rate{i}"] = round(per_board, 2)
            board[f"chain_acn{i}"] = 76
            board[f"temp_pcb{i}"] = f"{pcb - 2}-{pcb}-{pcb + 1}-{pcb - 1}"
            chip = pcb + 12 if self.physics.mode is Mode.MINING else pcb
            board[f"temp_chip{i}"] = f"{chip}-{chip + 1}-{chip + 2}-{chip}"
            board[f"freq{i}"] = 575
        header = {
            "BMMiner": "1.0.0",
            "CompileTime": "Tue Nov 12 20:15:04 UTC 2024",
            "Miner": "uart_trans.1.3",
            "Type": self.physics.model.name,
        }
        return self._ok(CODE_STATS, "CGMiner stats", "STATS", [header, board])

    def _cmd_power(self, _: str | None) -> Reply:
        watts = round(self.physics.power_w(self._now()))
        psu = "standby" if self.physics.mode is Mode.SLEEPING else "on"
        return self._ok(CODE_POWER, "Power", "POWER", [{"PSU": psu, "Watts": watts}])

    def _cmd_events(self, _: str | None) -> Reply:
        events = []
        if self._sleep_since is not None:
            events.append(
                {
                    "Code": "SLEEP",
                    "CreatedAt": int(self._sleep_since),
                    "Description": "Miner is in Sleep mode.",
                    "Id": 1,
                    "Target": "miner",
                }
            )
        return self._ok(CODE_EVENTS, f"{len(events)} Event(s)", "EVENTS", events)

    def _cmd_profiles(self, _: str | None) -> Reply:
        profiles = [
            {
                "Frequency": 575 + 25 * k,
                "Hashrate": p.hashrate_ths,
                "IsDynamic": False,
                "IsTuned": p.name == "default",
                "Profile Name": p.name,
                "Step": str(k),
                "Voltage": round(13.0 + 0.1 * k, 1),
                "Watts": p.power_w,
            }
            for k, p in enumerate(self.physics.model.all_profiles(), start=-4)
        ]
        return self._ok(CODE_PROFILES, f"{len(profiles)} Profile(s)", "PROFILES", profiles)

    def _cmd_pools(self, _: str | None) -> Reply:
        active = self.pools.active() if self.physics.mode is Mode.MINING else None
        pools = [
            {
                "Accepted": self.accepted if i == active else 0,
                "GROUP": 0,
                "Get Failures": 0,
                "POOL": i,
                "Priority": i,
                "Quota": 1,
                "Rejected": 0,
                "Remote Failures": 0,
                "Stale": 0,
                "Status": pool.status,
                "Stratum Active": i == active,
                "URL": pool.url,
                "User": pool.user,
                "Difficulty Accepted": 0,
                "Difficulty Rejected": 0,
                "Difficulty Stale": 0,
            }
            for i, pool in enumerate(self.pools.get())
        ]
        return self._ok(CODE_POOLS, f"{len(pools)} Pool(s)", "POOLS", pools)

    def _cmd_groups(self, _: str | None) -> Reply:
        return self._ok(
            CODE_GROUPS, "List groups", "GROUPS", [{"GROUP": 0, "Name": "default", "Quota": 1}]
        )

    def _cmd_fans(self, _: str | None) -> Reply:
        mining = self.physics.mode is Mode.MINING
        speed = 55 if mining else 20
        fans = [{"FAN": f"J{12 + i}", "ID": i, "RPM": speed * 80, "Speed": speed} for i in range(4)]
        reply = self._ok(CODE_FANS, "4 Fan(s)", "FANS", fans)
        reply["FANCTRL"] = [{"MinFans": 1, "PowerOffSpeed": 20}]
        return reply

    def _cmd_tempctrl(self, _: str | None) -> Reply:
        return self._ok(
            CODE_TEMPCTRL,
            "Temperature control",
            "TEMPCTRL",
            [
                {
                    "ChipDangerous": 85,
                    "ChipHot": 80,
                    "Dangerous": 75,
                    "Hot": 70,
                    "Mode": "Auto",
                    "Target": 65,
                }
            ],
        )

    def _cmd_temps(self, _: str | None) -> Reply:
        temps = [
            {
                "BottomLeft": round(t) - 3,
                "BottomRight": round(t) - 5,
                "ID": i,
                "TEMP": i,
                "TopLeft": round(t),
                "TopRight": round(t) + 1,
            }
            for i, t in enumerate(self._temps())
        ]
        return self._ok(CODE_TEMPS, f"{len(temps)} Temp(s)", "TEMPS", temps)

    def _cmd_devs(self, _: str | None) -> Reply:
        now = self._now()
        mhs = self.physics.hashrate_ths(now) * 1e6 / self.physics.model.boards
        devs = [
            {
                "ASC": i,
                "Enabled": "Y",
                "ID": i,
                "Status": "Alive",
                "Temperature": round(t, 1),
                "MHS 5s": round(mhs, 1),
                "MHS 5m": round(mhs, 1),
                "Profile": self.physics.profile.name,
                "Device Elapsed": int(now - self._started),
                "Nominal MHS": round(self.physics.profile.hashrate_ths * 1e6 / 3, 1),
                "IsUserShutdown": self.physics.mode is Mode.SLEEPING,
            }
            for i, t in enumerate(self._temps())
        ]
        return self._ok(CODE_DEVS, f"{len(devs)} ASC(s)", "DEVS", devs)

    def _cmd_devdetails(self, _: str | None) -> Reply:
        details = [
            {
                "DEVDETAILS": i,
                "Name": "ASC",
                "ID": i,
                "Driver": "luxminer",
                "Model": self.physics.model.name,
            }
            for i in range(self.physics.model.boards)
        ]
        return self._ok(CODE_DEVS, "Device Details", "DEVDETAILS", details)

    def _cmd_atm(self, _: str | None) -> Reply:
        return self._ok(
            CODE_ATM,
            "ATM configuration values",
            "ATM",
            [
                {
                    "Enabled": self.atm_enabled,
                    "MaxProfile": "default",
                    "MinProfile": "",
                    "PostRampMinutes": 15,
                    "StartupMinutes": 15,
                    "TempWindow": 5.0,
                }
            ],
        )

    def _cmd_limits(self, _: str | None) -> Reply:
        return self._ok(
            CODE_LIMITS,
            "Limits",
            "LIMITS",
            [
                {
                    "FrequencyStepMax": 100,
                    "FrequencyStepMin": 5,
                    "VoltageStepMax": 1.0,
                    "VoltageStepMin": 0.05,
                    "FanSpeedMax": 100,
                    "FanSpeedMin": 0,
                }
            ],
        )

    def _cmd_session(self, _: str | None) -> Reply:
        self._expire()
        return self._ok(
            CODE_SESSION, "Session information", "SESSION", [{"SessionID": self.session_id}]
        )

    # -- sessions --------------------------------------------------------------------------

    def _cmd_logon(self, _: str | None) -> Reply:
        self._expire()
        if self.session_id:
            return self.error(CODE_SESSION_ACTIVE, "Another session is active")
        alphabet = string.ascii_letters + string.digits
        self.session_id = "".join(self._rng.choice(alphabet) for _ in range(8))
        self._session_used = self._now()
        return self._ok(CODE_LOGON, "Session created", "SESSION", [{"SessionID": self.session_id}])

    def _cmd_logoff(self, parameter: str | None) -> Reply:
        args, problem = self._authorised(parameter, 0)
        if problem is not None:
            return problem
        del args
        self.session_id = ""
        return {"STATUS": [self._status(CODE_LOGOFF, "Session closed")], "id": 1}

    def _cmd_kill(self, _: str | None) -> Reply:
        self.session_id = ""
        return {"STATUS": [self._status(CODE_LOGOFF, "Session killed")], "id": 1}

    # -- writes ----------------------------------------------------------------------------

    def _cmd_curtail(self, parameter: str | None) -> Reply:
        args, problem = self._authorised(parameter, 1)
        if problem is not None:
            return problem
        action = args[0].strip().lower()
        now = self._now()
        if action == "sleep":
            if not self.fault.lying:
                self.physics.sleep(now)
                if self._sleep_since is None:
                    self._sleep_since = now
                self.commands.append("sleep")
            return self._ok(
                CODE_CURTAIL, "Curtailment command sent", "CURTAIL", [{"Action": "sleep mode"}]
            )
        if action == "wakeup":
            if not self.fault.lying:
                self.physics.wake(now)
                self._sleep_since = None
                self.commands.append("wakeup")
            return self._ok(
                CODE_CURTAIL, "Curtailment command sent", "CURTAIL", [{"Action": "wake up"}]
            )
        return self.error(CODE_MISSING_PARAM, f"Invalid curtail action '{action}'")

    def _cmd_profileset(self, parameter: str | None) -> Reply:
        args, problem = self._authorised(parameter, 1)
        if problem is not None:
            return problem
        name = args[-1].strip()
        profile = self.physics.model.profile(name)
        if profile is None:
            return self.error(CODE_MISSING_PARAM, f"Invalid profile '{name}'")
        if not self.fault.lying:
            self.physics.set_profile(profile, self._now())
            self.commands.append(f"profileset {name}")
        return self._ok(
            CODE_PROFILESET,
            "Profile Set",
            "PROFILE",
            [
                {
                    "Board": 0,
                    "FrequencyStep": 5,
                    "Profile": name,
                    "VoltageStep": 0.05,
                }
            ],
        )

    def _cmd_atmset(self, parameter: str | None) -> Reply:
        args, problem = self._authorised(parameter, 1)
        if problem is not None:
            return problem
        for arg in args:
            key, _, value = arg.partition("=")
            if key.strip() == "enabled":
                self.atm_enabled = value.strip().lower() == "true"
        return {
            "STATUS": [
                self._status(CODE_ATMSET, "Advanced Thermal Management configuration updated")
            ],
            "id": 1,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _authorised(self, parameter: str | None, min_args: int) -> tuple[list[str], Reply | None]:
        """Split `<sid>,args...`, check the session, refresh its idle timer."""
        parts = (parameter or "").split(",")
        sid, args = parts[0].strip(), parts[1:]
        self._expire()
        if self.fault.expiring:
            self.session_id = ""
        if not sid or sid != self.session_id:
            return [], self.error(CODE_INVALID_SESSION, "Invalid session_id")
        if len(args) < min_args:
            return [], self.error(CODE_MISSING_PARAM, "Missing parameter")
        self._session_used = self._now()
        return args, None

    def _expire(self) -> None:
        if self.session_id and self._now() - self._session_used > SESSION_IDLE_S:
            self.session_id = ""

    def _temps(self) -> list[float]:
        self.physics.advance(self._now())
        return list(self.physics.board_temps_c)

    def _status(self, code: int, msg: str, status: str = "S") -> dict[str, Any]:
        return {
            "Code": code,
            "Description": DESCRIPTION,
            "Msg": msg,
            "STATUS": status,
            "When": int(self._now()),
        }

    def _ok(self, code: int, msg: str, section: str, data: list[dict[str, Any]]) -> Reply:
        return {section: data, "STATUS": [self._status(code, msg)], "id": 1}


def _build(spec: SimMinerSpec, ctx: BuildContext) -> Built:
    device = LuxosDevice(
        ctx.physics,
        ctx.fault,
        time_fn=ctx.time_fn,
        rng=ctx.rng,
        serial=ctx.serial,
        mac=ctx.mac,
        pools=ctx.pools,
    )
    server = CgminerServer(
        spec.host,
        spec.port,
        device,
        ctx.fault,
        rng=ctx.rng,
        observer=ctx.observer,
        missing=ctx.missing,
    )
    return Built(device, (server,))


def _model(spec: SimMinerSpec) -> MinerModel:
    return model_for(spec.rated_power_w, spec.efficiency_j_th)


FAMILY = Family("luxos", ("luxos",), _build, _model)


def model_for(rated_power_w: int, efficiency_j_th: float) -> MinerModel:
    """A plausible Antminer model under LuxOS for a rated power and efficiency."""
    hashrate = round(rated_power_w / efficiency_j_th, 1)
    name = antminer_class(efficiency_j_th) or "Antminer S19 Pro"
    return MinerModel(name=name, rated_power_w=rated_power_w, hashrate_ths=hashrate)
