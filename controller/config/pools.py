"""The `pools:` section: the pools the state approves, and what curtaild does about a miner
configured with any other (controller/core/pools.py says exactly what matches)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from controller.config.fields import ConfigModel, Seconds
from controller.core.pools import ApprovedPool, Enforce, UrlError, approved_pool, parse_url

UserPrefix = Annotated[str, Field(min_length=1, max_length=200)]


class ApprovedPoolCfg(ConfigModel):
    """One approved pool: a stratum URL (stratum+tcp, stratum+ssl or stratum2+tcp; host;
    port, else the scheme's default), and optionally the worker-name prefixes allowed on
    it (absent: any worker)."""

    url: Annotated[str, Field(min_length=1, max_length=500)]
    users: list[UserPrefix] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _stratum(cls, value: str) -> str:
        try:
            parse_url(value, approved=True)
        except UrlError as err:
            raise ValueError(str(err)) from None
        return value


class PoolsCfg(ConfigModel):
    """Approved pools and the periodic check of every miner's pool configuration."""

    approved: Annotated[list[ApprovedPoolCfg], Field(min_length=1)]
    # alarm: flag a miner on an unapproved pool; sleep: also keep it asleep until fixed.
    enforce: Enforce = Enforce.ALARM
    check_interval_s: Seconds = 300.0
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 32  # pool reads at once

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.approved):
            key = str(parse_url(entry.url, approved=True))
            if key in seen and not (entry.users and self.approved[seen[key]].users):
                # Two entries for one pool, either for any worker: one would hide the other.
                raise ValueError(
                    f"approved[{i}]: {entry.url} is the same pool as approved[{seen[key]}]"
                )
            seen.setdefault(key, i)
        return self

    def approved_pools(self) -> tuple[ApprovedPool, ...]:
        return tuple(approved_pool(e.url, e.users) for e in self.approved)
