"""The benchmark's fleets, shared by the simulator shards and the curtaild contender.

`luxos`: every miner a LuxOS S19-class unit (the fleet the bare loop and pyasic can drive).
`mixed`: the demo farm's blend of the four families, interleaved so that every simulator
shard and every dispatch batch carries all of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FARMS = ("luxos", "mixed")


@dataclass(frozen=True, slots=True)
class BenchMiner:
    id: str
    driver: str
    host: str
    port: int
    web_port: int | None
    rated_power_w: int
    efficiency_j_th: float

    @property
    def container(self) -> str:
        return f"c{int(self.id[1:]) // 500}"


# (driver, API port, web port, rated W, J/TH): where each family listens in the simulator.
# Braiins OS+ REST and the stock Antminer CGI sit on 8080 (80 on real units) so the
# benchmark needs no privileged port.
FAMILIES: dict[str, tuple[int, int | None, int, float]] = {
    "luxos": (4028, None, 3250, 29.5),
    "braiins-os": (8080, None, 3010, 21.5),
    "whatsminer-v2": (4028, None, 3400, 31.0),
    "whatsminer": (4028, None, 3300, 26.0),  # new firmware: probed on 4028, then v3 on 4433
    "antminer-stock": (4028, 8080, 3050, 29.5),
}
# One cycle of twenty: half LuxOS, a quarter Braiins OS+, the rest Whatsminer and stock
# Antminer, in the demo farm's proportions.
MIX: tuple[str, ...] = (
    ("luxos",) * 10
    + ("braiins-os",) * 5
    + ("whatsminer-v2",) * 2
    + ("whatsminer",) * 1
    + ("antminer-stock",) * 2
)


def build(hosts: list[str], farm: str) -> list[BenchMiner]:
    if farm not in FARMS:
        raise ValueError(f"unknown farm {farm!r}; choose one of {', '.join(FARMS)}")
    fleet = []
    for i, host in enumerate(hosts):
        # Pairs share a family so that both shards (every other address) get the full mix.
        driver = "luxos" if farm == "luxos" else MIX[(i // 2) % len(MIX)]
        port, web_port, rated, eff = FAMILIES[driver]
        fleet.append(BenchMiner(f"b{i:05d}", driver, host, port, web_port, rated, eff))
    return fleet


def write(path: Path, fleet: list[BenchMiner]) -> None:
    path.write_text("".join(json.dumps(asdict(m)) + "\n" for m in fleet))


def read(path: Path) -> list[BenchMiner]:
    return [BenchMiner(**json.loads(line)) for line in path.read_text().splitlines() if line]
