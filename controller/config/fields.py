"""What every part of the site config is built from: the strict base model, the shared
field types, the host and listen-address checks, and secrets named by reference."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MAX_RANGE = 65_536

Ident = Annotated[str, Field(pattern=ID_PATTERN)]
Kilowatts = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConfigModel(BaseModel):
    """A section of the config: unknown keys are errors, and nothing changes after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(ConfigModel):
    """A secret named by reference: an environment variable or a file, never inline."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self) -> str:
        """The secret's value; ValueError naming what is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as err:
            raise ValueError(f"cannot read {self.file}: {err.strerror}") from None
        if not value:
            raise ValueError(f"{self.file} is empty")
        return value


def index_sample(pattern: str, *, quote_error: bool = False) -> str:
    """The id a `{n}` pattern gives for n=1; ValueError if it has no usable {n}."""
    try:
        sample = pattern.format(n=1)
    except (KeyError, IndexError, ValueError) as err:
        # Miner ranges have always shown the error's text, outlet ranges its repr.
        detail = repr(err) if quote_error else str(err)
        raise ValueError(f"use {{n}} for the index, e.g. c1-{{n:03d}}: {detail}") from None
    if sample == pattern.format(n=2):
        raise ValueError("must contain {n}, e.g. c1-{n:03d}")
    return sample


def expand_hosts(spec: str) -> list[str]:
    """'10.0.1.10-10.0.1.59' -> every IPv4 address in the inclusive range."""
    first, sep, last = spec.partition("-")
    if not sep:
        raise ValueError("give a range first-last, e.g. 10.0.1.10-10.0.1.59")
    try:
        lo = ipaddress.IPv4Address(first.strip())
        hi = ipaddress.IPv4Address(last.strip())
    except ValueError as err:
        raise ValueError(f"not an IPv4 range: {err}") from None
    count = int(hi) - int(lo) + 1
    if count < 1:
        raise ValueError(f"{hi} comes before {lo}")
    if count > MAX_RANGE:
        raise ValueError(f"{count} addresses; at most {MAX_RANGE} per range")
    return [str(ipaddress.IPv4Address(int(lo) + i)) for i in range(count)]


def check_listen(value: str) -> str:
    """A host:port to listen on (port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
        raise ValueError("give host:port, e.g. 127.0.0.1:8480")
    check_host(host.strip("[]"))
    return value


def check_host(host: str) -> str:
    """An IP address or a host name; ValueError otherwise."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # All-numeric dotted names are mistyped addresses, not host names.
        if not _HOSTNAME.match(host) or re.fullmatch(r"[\d.]+", host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return host


Host = Annotated[str, AfterValidator(check_host)]  # where a device or miner answers
