"""Braiins OS+ REST v1 of one miner: requests under its login token, renewed before the
sliding expiry and once on a 401, the replies judged into JSON or DriverErrors."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from drivers.errors import AuthError, ProtocolError, RejectedError, UnsupportedError
from drivers.transport import http
from drivers.transport.cgminer_tcp import repair
from drivers.types import MinerEndpoint

API = "/api/v1"
DEFAULT_USERNAME = "root"
# pyasic and asic-rs log in with root/root; some units ship with no password (give "").
DEFAULT_PASSWORD = "root"  # noqa: S105 - the firmware's well-known default, not a secret
TOKEN_REUSE_FRACTION = 0.9  # log in anew before the sliding expiry rather than eat a 401

HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
NOT_THERE = frozenset({404, 405, 501})  # the firmware predates the endpoint


class RestClient:
    """The REST API of one miner. Its caller keeps one call in flight at a time."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._base = http.origin(endpoint.host, endpoint.port) + API
        self._username = endpoint.username or DEFAULT_USERNAME
        self._password = DEFAULT_PASSWORD if endpoint.password is None else endpoint.password
        self._token: str | None = None
        self._token_fresh_until = 0.0  # time.monotonic()
        self._token_reuse_s = 0.0

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    def forget(self) -> None:
        """Drop the token: the next call logs in anew."""
        self._token = None

    async def call(self, method: str, path: str, op: str, body: object = None) -> Any:  # noqa: ANN401 - JSON
        """One authenticated request; on 401 log in again and retry once."""
        for _ in range(2):
            token = await self._auth()
            response = await http.request(
                method,
                self._base + path,
                device=self.miner_id,
                op=op,
                timeout_s=self._ep.timeout_s,
                json_body=body,
                headers={"Authorization": token},
            )
            if response.status != HTTP_UNAUTHORIZED:
                self._token_fresh_until = time.monotonic() + self._token_reuse_s  # it slid on
                return self._judge(response, op)
            self._token = None  # expired, or the miner rebooted: one fresh login
        raise RejectedError(
            self.miner_id, op, "HTTP 401: the token was refused even after a fresh login", code=401
        )

    async def _auth(self) -> str:
        if self._token is not None and time.monotonic() < self._token_fresh_until:
            return self._token
        response = await http.request(
            "POST",
            f"{self._base}/auth/login",
            device=self.miner_id,
            op="login",
            timeout_s=self._ep.timeout_s,
            json_body={"username": self._username, "password": self._password},
        )
        if response.status in (HTTP_UNAUTHORIZED, HTTP_FORBIDDEN):
            raise AuthError(self.miner_id, "login", f"HTTP {response.status}: credentials refused")
        reply = self._judge(response, "login")
        try:
            token, timeout_s = reply["token"], float(reply["timeout_s"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(
                self.miner_id, "login", f"unexpected reply layout: {err!r}"
            ) from None
        if not isinstance(token, str) or not token or not math.isfinite(timeout_s):
            raise ProtocolError(self.miner_id, "login", "no usable token in the reply")
        self._token = token
        self._token_reuse_s = max(0.0, timeout_s * TOKEN_REUSE_FRACTION)
        self._token_fresh_until = time.monotonic() + self._token_reuse_s
        return token

    def _judge(self, response: http.Response, op: str) -> Any:  # noqa: ANN401 - JSON
        status = response.status
        if status in NOT_THERE:
            raise UnsupportedError(
                self.miner_id, op, f"HTTP {status}: the firmware does not offer this"
            )
        if not 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            text = response.body[:120].decode("utf-8", errors="replace").strip()
            raise RejectedError(self.miner_id, op, f"HTTP {status}: {text}", code=status)
        if not response.body.strip():
            return None
        return _loads(response.body, self.miner_id, op, status)


def _loads(body: bytes, device: str, op: str, status: int) -> Any:  # noqa: ANN401 - JSON
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        # Real BOS+ REST is clean serde JSON; a proxy or a half-written reply may not be.
        return json.loads(repair(text))
    except (ValueError, RecursionError):
        raise ProtocolError(
            device, op, f"HTTP {status}: unparseable reply ({len(body)} bytes): {text[:60]!r}"
        ) from None
