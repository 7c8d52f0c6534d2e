"""The command line's client of the running daemon's operator API (`curtaild grants
import`): where the daemon listens comes from the site config's `api:` section, the token
from the environment or a file, never from the command line (where `ps` shows it).

Over TLS the client trusts exactly the certificate the config names (its SHA-256 is
pinned): the CLI runs on the daemon's own box, against its own listener.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from controller.config import ApiCfg

TIMEOUT_S = 30.0  # a month's schedule is journaled with an fsync: seconds at worst
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - listen, not bind
MAX_TOKEN_BYTES = 1024


class ClientError(Exception):
    """The request could not be made or answered; `str()` says why, for a person."""


@dataclass(frozen=True, slots=True)
class Target:
    base: str  # scheme://host:port
    pin: aiohttp.Fingerprint | None  # TLS: the configured certificate's SHA-256


def target(api: ApiCfg | None) -> Target:
    """Where the daemon's operator API listens, as this box reaches it."""
    if api is None:
        raise ClientError(
            "the site config has no api: section, so the daemon serves no operator API"
        )
    host = WILDCARDS.get(api.host, api.host)
    shown = f"[{host}]" if ":" in host else host
    if api.port == 0:
        raise ClientError("api.listen has port 0 (any free port): name the daemon's port")
    if api.tls is None:
        return Target(f"http://{shown}:{api.port}", None)
    try:
        cert = x509.load_pem_x509_certificate(api.tls.cert.read_bytes())
    except (OSError, ValueError) as err:
        raise ClientError(f"api.tls.cert {api.tls.cert}: cannot read it: {err}") from None
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    return Target(f"https://{shown}:{api.port}", aiohttp.Fingerprint(digest))


def token(*, env: str, file: Path | None) -> str:
    """The bearer token: from `file` if given, else the environment variable `env`."""
    if file is not None:
        try:
            raw = file.read_bytes()[:MAX_TOKEN_BYTES]
        except OSError as err:
            raise ClientError(f"--token-file {file}: {err.strerror or err}") from None
        value = raw.decode("utf-8", errors="replace").strip()
        where = f"--token-file {file}"
    else:
        value = os.environ.get(env, "").strip()
        where = f"the environment variable {env}"
    if not value:
        raise ClientError(
            f"no token in {where}: set {env} or give --token-file (`curtaild token` makes one)"
        )
    return value


async def post(
    where: Target, path: str, body: bytes, content_type: str, bearer: str
) -> tuple[int, dict[str, Any] | str]:
    """POST `body`; (status, the answer: a JSON object, else its text)."""
    url = where.base + path
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": content_type}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=body, headers=headers, ssl=where.pin or True) as reply,
        ):
            text = await reply.text(errors="replace")
            status = reply.status
    except aiohttp.ServerFingerprintMismatch:
        raise ClientError(
            f"{where.base} answered with a certificate other than api.tls.cert's: "
            f"not this daemon's (or the file was renewed without a SIGHUP)"
        ) from None
    except aiohttp.ClientConnectorError as err:
        raise ClientError(
            f"cannot reach the operator API at {where.base}: {err.os_error.strerror or err} "
            f"(is curtaild running with this config?)"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as err:
        why = f"no answer within {TIMEOUT_S:g} s" if isinstance(err, TimeoutError) else str(err)
        raise ClientError(f"{url}: {why or type(err).__name__}") from None
    try:
        parsed = json.loads(text)
    except ValueError:
        return status, text
    return status, parsed if isinstance(parsed, dict) else text
