"""Independent clients as witnesses: third-party code drives our simulators.

Runs in its own virtualenv (pyasic 0.79.0, Luxor's luxos 0.2.4; never product
dependencies) against `curtaild sim` started from the project's virtualenv. Every check is
made on the simulator's resulting state, read through its control API, not on what the
client says: pyasic reports success for commands that failed (see the comments).

    python tests/witness/run.py --curtaild /path/to/.venv/bin/curtaild

Exit status 0 only if every check passed. Standard library plus the two clients only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FARM = HERE / "farm.yaml"

Check = Callable[["Sim"], Awaitable[None]]
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS.append((name, fn))
        return fn

    return register


class Sim:
    """The running simulator, seen through its control API."""

    def __init__(self, base: str) -> None:
        self.base = base

    def state(self, miner: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/miners/{miner}", timeout=5) as reply:
            data: dict[str, Any] = json.load(reply)
        return data

    def host(self, miner: str) -> str:
        return str(self.state(miner)["host"])

    def port(self, miner: str) -> int:
        return int(self.state(miner)["port"])

    async def mode_becomes(self, miner: str, mode: str, within_s: float = 30.0) -> None:
        """The simulated hardware itself reaches `mode` (some firmware acts late)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.state(miner)["mode"] == mode:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{miner}: still {self.state(miner)['mode']}, expected {mode}")


# -- LuxOS ---------------------------------------------------------------------------------


@check("pyasic 0.79.0 drives the LuxOS simulator")
async def pyasic_luxos(sim: Sim) -> None:
    from pyasic.miners.antminer import LUXMinerS19  # noqa: PLC0415

    miner = LUXMinerS19(sim.host("lux-1"))
    miner.rpc.port = sim.port("lux-1")
    data = await miner.get_data()
    truth = sim.state("lux-1")
    assert data.wattage == round(truth["power_w"]), (data.wattage, truth["power_w"])
    assert data.hashboards
    assert data.hashboards[0].temp is not None
    # stop_mining() returns True even when nothing happened (it swallows errors), so the
    # check is on the simulator. pyasic also keeps the session it opened (no logoff).
    assert await miner.stop_mining()
    await sim.mode_becomes("lux-1", "sleeping")
    assert await miner.resume_mining()
    await sim.mode_becomes("lux-1", "mining")


@check("Luxor's luxos client drives the LuxOS simulator")
async def luxos_client(sim: Sim) -> None:
    from luxos import asyncops  # noqa: PLC0415

    host, port = sim.host("lux-2"), sim.port("lux-2")
    version = await asyncops.rexec(host, port, "version")
    assert "LUXminer" in json.dumps(version)
    # rexec does logon -> command -> logoff and reads up to the NUL, as the cgminer API
    # frames replies; its pretty-printed multi-line requests must parse as well.
    await asyncops.rexec(host, port, "curtail", "sleep")
    await sim.mode_becomes("lux-2", "sleeping")
    await asyncops.rexec(host, port, "curtail", "wakeup")
    await sim.mode_becomes("lux-2", "mining")
    session = await asyncops.rexec(host, port, "session")
    assert session["SESSION"][0]["SessionID"] == ""  # luxos released what it took


# -- Braiins OS+ ----------------------------------------------------------------------------


@check("pyasic 0.79.0 drives the Braiins OS+ simulator (gRPC)")
async def pyasic_braiins(sim: Sim) -> None:
    from pyasic.miners.antminer.bosminer.X19.S19 import BOSMinerS19jPro  # noqa: PLC0415

    truth = sim.state("bos-1")
    miner = BOSMinerS19jPro(truth["host"])
    miner.web.port = truth["web_port"]  # the gRPC API; pyasic ignores REST
    miner.rpc.port = 4028
    data = await miner.get_data()
    assert data.is_mining
    assert data.hashboards
    assert await miner.stop_mining()
    await sim.mode_becomes("bos-1", "sleeping")
    assert not (await miner.get_data(include=["is_mining"])).is_mining
    assert await miner.set_power_limit(2500)
    assert sim.state("bos-1")["profile"].startswith("2500")  # the target reached the device
    assert await miner.resume_mining()
    await sim.mode_becomes("bos-1", "mining")


# -- Whatsminer -----------------------------------------------------------------------------


async def _pyasic_whatsminer(sim: Sim, miner_id: str, backend: str) -> None:
    from pyasic import get_miner  # noqa: PLC0415

    truth = sim.state(miner_id)
    # pyasic's own factory, as a farm would use it: it picks API v2 or v3 from the firmware
    # date our simulator reports (v3 firmware still answers v2-style on 4028).
    miner = await get_miner(truth["host"])
    assert miner is not None
    assert backend in [cls.__name__ for cls in type(miner).__mro__], type(miner).__mro__
    data = await miner.get_data()
    assert data.wattage == round(truth["power_w"]), (data.wattage, truth["power_w"])
    await miner.stop_mining()  # its answer is not trusted: power_off may never reply
    await sim.mode_becomes(miner_id, "sleeping")
    await miner.resume_mining()
    await sim.mode_becomes(miner_id, "mining")


@check("pyasic 0.79.0 drives the Whatsminer simulator over API v2")
async def pyasic_whatsminer_v2(sim: Sim) -> None:
    await _pyasic_whatsminer(sim, "wm-1", "BTMinerV2")


@check("pyasic 0.79.0 drives the Whatsminer simulator over API v3")
async def pyasic_whatsminer_v3(sim: Sim) -> None:
    await _pyasic_whatsminer(sim, "wm-2", "BTMinerV3")


# -- stock Antminer -------------------------------------------------------------------------


@check("pyasic 0.79.0 drives the stock Antminer simulator (CGI with Digest auth)")
async def pyasic_antminer(sim: Sim) -> None:
    from pyasic import get_miner  # noqa: PLC0415

    truth = sim.state("am-1")
    # pyasic's factory probes the real ports (4028 and 80); its web calls ignore any other
    # port, which is why this miner serves its CGI on port 80.
    miner = await get_miner(truth["host"])
    assert miner is not None
    assert "AntminerModern" in [cls.__name__ for cls in type(miner).__mro__], type(miner)
    data = await miner.get_data()
    assert data.hashboards
    pools_before = _antminer_conf(truth["host"])["pools"]
    assert pools_before[0]["url"]
    # pyasic writes only `miner-mode` and its stop_mining() returns True whatever happens;
    # the simulated unit (like the 2022 S19j Pro build it follows) acts on that key.
    await miner.stop_mining()
    await sim.mode_becomes("am-1", "sleeping", within_s=60)
    await miner.resume_mining()
    await sim.mode_becomes("am-1", "mining", within_s=60)
    # pyasic resends the config it read, so the pools survive both writes.
    assert _antminer_conf(truth["host"])["pools"] == pools_before


def _antminer_conf(host: str) -> dict[str, Any]:
    """The unit's saved config, through its own Digest-protected CGI."""
    url = f"http://{host}/cgi-bin/get_miner_conf.cgi"
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, url, "root", "root")
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(passwords))
    with opener.open(url, timeout=10) as reply:
        conf: dict[str, Any] = json.load(reply)
    return conf


async def run_checks(sim: Sim) -> int:
    failures = 0
    for name, fn in CHECKS:
        try:
            await asyncio.wait_for(fn(sim), 90)
        except Exception as err:
            failures += 1
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
        else:
            print(f"ok   {name}", flush=True)
    print(f"witnesses: {len(CHECKS) - failures}/{len(CHECKS)} passed", flush=True)
    return 1 if failures else 0


def run(curtaild: str) -> int:
    port = _free_port()
    sim_process = subprocess.Popen(
        [curtaild, "sim", "-c", str(FARM), "--control", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        sim = Sim(f"http://127.0.0.1:{port}/v1")
        _wait_ready(sim, sim_process)
        return asyncio.run(run_checks(sim))
    finally:
        sim_process.terminate()
        sim_process.wait(15)


def _wait_ready(sim: Sim, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise SystemExit(f"curtaild sim exited: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"{sim.base}/miners", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the simulator's control API never came up")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curtaild", required=True, help="the project's curtaild executable")
    args = parser.parse_args()
    sys.exit(run(args.curtaild))


if __name__ == "__main__":
    main()
