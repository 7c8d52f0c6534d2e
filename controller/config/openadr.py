"""`grid.openadr`: the site as an OpenADR 2.0b VEN of one VTN (controller/adapters/openadr.py).

2.0b requires TLS with client certificates, so the VEN's certificate and key and the VTN's
CA are required. Events become signals of `source`, one of `signals.sources`, so that
source's heartbeat timeout and stale policy apply to the VTN (each successful poll is a
heartbeat; checks.py wants poll_interval_s below its heartbeat_timeout_s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from controller.config.fields import ConfigModel, Ident, Kilowatts, Seconds, SecretRef

SIMPLE_LEVELS = (1, 2, 3)  # SIMPLE level 0 is "normal operation": no limit


class LevelLimitCfg(ConfigModel):
    """What a SIMPLE level allows: a fixed draw or a fraction of the site cap."""

    kw: Kilowatts | None = None
    fraction: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.kw is None) == (self.fraction is None):
            raise ValueError("give exactly one of kw or fraction (of grid.cap_kw)")
        return self

    def watts(self, cap_w: int) -> int:
        if self.kw is not None:
            return int(self.kw * 1000)
        assert self.fraction is not None
        return int(self.fraction * cap_w)  # rounded down: never a higher limit


class OptOutRuleCfg(ConfigModel):
    """Opt out of events that match every condition given; `reason` goes to the journal."""

    reason: Annotated[str, Field(min_length=1, max_length=200)]
    market_context: str | None = None
    signal_name: str | None = None  # e.g. LOAD_DISPATCH
    min_level: Annotated[int, Field(ge=1, le=3)] | None = None  # SIMPLE levels at or above
    notice_below_s: Seconds | None = None  # less notice than this before the event starts

    @model_validator(mode="after")
    def _some(self) -> Self:
        conditions = (self.market_context, self.signal_name, self.min_level, self.notice_below_s)
        if all(c is None for c in conditions):
            raise ValueError(
                "give at least one condition (market_context, signal_name, min_level, "
                "notice_below_s); an opt-out of every event is no enrolment"
            )
        return self


class OpenAdrCfg(ConfigModel):
    vtn_url: Annotated[str, Field(pattern=r"^https://[^\s/]+(/\S*)?$")]
    ven_name: Annotated[str, Field(min_length=1, max_length=100)]
    ven_id: str | None = None  # None: the VTN assigns one at registration
    source: Ident  # a signals.sources id: its heartbeat and stale policy apply to the VTN
    cert: Path  # the VEN's client certificate (PEM)
    key: Path  # its private key (PEM)
    key_password: SecretRef | None = None
    vtn_ca: Path  # the CA bundle the VTN's server certificate must chain to
    # False accepts any certificate vtn_ca signed, whatever host it names.
    check_hostname: bool = True
    # Poll at least this often, more often if the VTN asks (requested_oadr_poll_freq).
    poll_interval_s: Seconds = 10.0
    request_timeout_s: Seconds = 10.0
    reregister_max_s: Seconds = 60.0  # the backoff's ceiling while the VTN is away
    levels: dict[Literal[1, 2, 3], LevelLimitCfg]
    # An event with no ramp-up and no start-after must be met this long after it starts.
    deadline_s: Seconds = 10.0
    opt_out: list[OptOutRuleCfg] = Field(default_factory=list)

    @model_validator(mode="after")
    def _levels(self) -> Self:
        missing = [level for level in SIMPLE_LEVELS if level not in self.levels]
        if missing:
            raise ValueError(f"levels: give a limit for every SIMPLE level 1-3; missing {missing}")
        return self
