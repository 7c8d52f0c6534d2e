"""The config's HTTP listeners (the grid endpoint, the operator API), their TLS and the
operator API's tokens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from controller.config.fields import ConfigModel, Ident, SecretRef, check_listen
from controller.tls import TlsFiles, is_loopback


class TlsCfg(ConfigModel):
    """TLS for a listener. The files are re-read on SIGHUP; the rest needs a restart."""

    cert: Path  # PEM: the server certificate first, then any intermediates
    key: Path  # PEM private key
    key_password: SecretRef | None = None  # for an encrypted key

    def files(self) -> TlsFiles:
        password = self.key_password.resolve if self.key_password is not None else None
        return TlsFiles(self.cert, self.key, password)


class GridTlsCfg(TlsCfg):
    """The grid endpoint's TLS, which can also verify the grid side's client certificate."""

    client_ca: Path | None = None  # PEM bundle of the CAs that sign the grid side's certs
    require_client_cert: bool = False  # without one, the handshake fails (no HTTP answer)

    @model_validator(mode="after")
    def _ca(self) -> Self:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert needs client_ca, the CA bundle to verify with")
        return self

    def files(self) -> TlsFiles:
        return replace(
            super().files(), client_ca=self.client_ca, require_client_cert=self.require_client_cert
        )


class Listener(ConfigModel):
    """A section that listens on `listen` (host:port; port 0: any free port)."""

    listen: str
    tls: TlsCfg | None = None
    # Plain HTTP on an address other machines can reach: only when this says so.
    allow_plaintext: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    @model_validator(mode="after")
    def _exposed(self) -> Self:
        if self.tls is None and not self.allow_plaintext and not is_loopback(self.host):
            raise ValueError(
                f"{self.host} is not a loopback address, so requests to it cross the network "
                "in plain text: add a tls: section (cert, key), or allow_plaintext: true to "
                "serve plain HTTP there on purpose"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def plaintext_exposed(self) -> bool:
        """Plain HTTP that other machines can reach (allow_plaintext says so)."""
        return self.tls is None and not is_loopback(self.host)


class HttpCfg(Listener):
    listen: str = "127.0.0.1:8480"
    tls: GridTlsCfg | None = None


Role = Literal["viewer", "operator", "admin"]


class ApiTokenCfg(ConfigModel):
    """One operator's bearer token, stored as its SHA-256 only (`curtaild token` makes
    one). Tokens are 256 random bits, so a fast hash is enough: nothing to brute-force."""

    name: Ident  # who: every change made with this token is journaled under this name
    role: Role
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ApiCfg(Listener):
    """The operator API, the dashboard and /metrics, on their own listener."""

    listen: str = "127.0.0.1:8481"
    tokens: list[ApiTokenCfg] = Field(default_factory=list)  # none: every request is 401
    history_s: Annotated[float, Field(ge=60, le=86_400, allow_inf_nan=False)] = 3600.0
    metrics_public: bool = True  # Prometheus scrapes /metrics without a token

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: list[ApiTokenCfg]) -> list[ApiTokenCfg]:
        if any(t.name == "curtaild" for t in tokens):
            raise ValueError("the name curtaild is the daemon's own in the journal")
        for what in ("name", "sha256"):
            seen = [getattr(t, what) for t in tokens]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"two tokens share a {what}: {', '.join(dupes)}")
        return tokens
