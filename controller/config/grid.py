"""The grid side of the config: the connection's limits and the signal sources, with the
MQTT broker and HTTP endpoint that signals arrive by."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from controller.config.fields import ConfigModel, Ident, Kilowatts, Seconds, SecretRef
from controller.config.listeners import HttpCfg
from controller.config.openadr import OpenAdrCfg
from controller.core.signals import GridMode, StalePolicy


class GridCfg(ConfigModel):
    mode: GridMode
    cap_kw: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    base_allowance_kw: Kilowatts = 0.0
    margin_kw: Kilowatts = 0.0
    grant_end_lead_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 15.0
    response_deadline_s: Seconds = 10.0
    openadr: OpenAdrCfg | None = None  # the site as an OpenADR 2.0b VEN

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.base_allowance_kw > self.cap_kw:
            raise ValueError("base_allowance_kw must not exceed cap_kw")
        if self.margin_kw >= self.cap_kw:
            raise ValueError("margin_kw must be below cap_kw")
        return self


class SourceCfg(ConfigModel):
    id: Ident
    # The HMAC key of signed signals; only grid.openadr's source may go without (its VTN
    # is authenticated by TLS).
    key: SecretRef | None = None
    heartbeat_timeout_s: Seconds | None = None
    on_stale: StalePolicy = StalePolicy.HOLD
    stale_limit_kw: Kilowatts | None = None

    @model_validator(mode="after")
    def _fallback(self) -> Self:
        if self.on_stale is StalePolicy.LIMIT and self.stale_limit_kw is None:
            raise ValueError("on_stale: limit needs stale_limit_kw")
        if self.on_stale is not StalePolicy.HOLD and self.heartbeat_timeout_s is None:
            raise ValueError(f"on_stale: {self.on_stale.value} needs heartbeat_timeout_s")
        return self


class MqttCfg(ConfigModel):
    url: Annotated[str, Field(pattern=r"^mqtts?://[^/\s:]+(:\d{1,5})?/?$")]
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+\s]+$")] = "curtaild"
    client_id: str | None = None
    username: str | None = None
    password: SecretRef | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_max_s: Seconds = 30.0

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        rest = self.url.split("://", 1)[1].rstrip("/")
        if ":" in rest:
            return int(rest.rsplit(":", 1)[1])
        return 8883 if self.tls else 1883

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")


class SignalsCfg(ConfigModel):
    sources: Annotated[list[SourceCfg], Field(min_length=1)]
    mqtt: MqttCfg | None = None
    http: HttpCfg | None = None
    replay_window_s: Seconds = 30.0  # the contract's window; configurable for lab clocks

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[SourceCfg]) -> list[SourceCfg]:
        ids = [s.id for s in sources]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"source ids must be unique: {', '.join(dupes)}")
        # An OpenADR source's events are held as "<source>:<event>": uploaded grants own
        # the "auction:" ids (so no grid signal can collide with one).
        if "auction" in ids:
            raise ValueError("source id 'auction' is reserved for uploaded auction schedules")
        return sources
