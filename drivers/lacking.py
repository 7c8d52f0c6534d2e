"""What one miner's firmware has shown it lacks: an optional command, endpoint or field.

Older and newer firmware serve different sets. A reading needs only its family's
essential parts (the mode, and the power or what the power is estimated from); the rest
is optional. An optional part the firmware answers "no such thing" for (HTTP 404, a
cgminer "Invalid command", a key the reply does not carry) is learnt per miner, logged
once, and not asked for again for an hour: the reading goes on without it, its fields at
their neutral value (no temperatures, no profile). Then it is asked for once more, so a
firmware upgraded in place, or a 404 from an API still starting after a boot, does not
cost the part for good. A missing essential part is an UnsupportedError: the miner stays
unknown, and the reason says what it lacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import structlog

from drivers.errors import UnsupportedError

RECHECK_S = 3600.0  # a part learnt missing is asked for again after this long


class Lacking:
    """The optional parts one miner lacks, learnt from its own answers."""

    __slots__ = ("_clock", "_device", "_names", "_told", "_until")

    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._device = device
        self._clock = clock
        self._names: dict[str, str] = {}  # name -> what goes on without it
        self._until: dict[str, float] = {}  # name -> when to ask for it again
        self._told: set[str] = set()  # warned about once: a recheck that finds it missing is quiet

    def __contains__(self, name: object) -> bool:
        if name not in self._names:
            return False
        assert isinstance(name, str)
        if self._clock() >= self._until[name]:
            del self._names[name], self._until[name]  # ask for it once more
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, name: str, without: str) -> None:
        """The firmware lacks `name`; `without` says what the driver does instead."""
        if name in self._names:
            return
        self._names[name] = without
        self._until[name] = self._clock() + RECHECK_S
        if name in self._told:
            return
        self._told.add(name)
        # A logger per warning, not one cached at import: once per miner and part is rare.
        structlog.get_logger("curtaild.drivers").warning(
            "firmware lacks an optional part; the driver goes on without it",
            miner=self._device,
            missing=name,
            without=without,
        )

    def essential(self, name: str, op: str, needed_for: str) -> UnsupportedError:
        """The error for a part a reading (or command) cannot do without."""
        return UnsupportedError(
            self._device, op, f"the firmware lacks {name}, which {needed_for} needs"
        )

    def filter(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        """`parts` without those known lacking."""
        return tuple(p for p in parts if p not in self)
