"""The stock web CGI of one Antminer: JSON requests behind HTTP Digest, its refusals
turned into DriverErrors."""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import aiohttp

from drivers.errors import AuthError, DriverError, ProtocolError, RejectedError, UnsupportedError
from drivers.transport import cgminer_tcp, http
from drivers.types import MinerEndpoint

DEFAULT_USER = "root"  # the only web user on stock firmware
DEFAULT_PASSWORD = "root"  # noqa: S105 - Bitmain's published default, overridable per miner
DEFAULT_WEB_PORT = 80


class WebCgi:
    """One miner's CGIs (/cgi-bin/<name>.cgi), each answered with JSON."""

    def __init__(self, endpoint: MinerEndpoint) -> None:
        self._ep = endpoint
        self._user = endpoint.username or DEFAULT_USER
        # One middleware per miner: it keeps the last challenge and answers the next request
        # pre-emptively (nonce count + 1), so only the first call or an expired nonce costs
        # a 401 round trip. It is scoped to this miner's origin.
        self._auth = aiohttp.DigestAuthMiddleware(self._user, endpoint.password or DEFAULT_PASSWORD)
        self._base = http.origin(endpoint.host, endpoint.web_port or DEFAULT_WEB_PORT)

    @property
    def miner_id(self) -> str:
        return self._ep.miner_id

    async def request(
        self,
        method: str,
        cgi: str,
        op: str,
        *,
        json_body: object = None,
        timeout_s: float | None = None,
        admit: bool = True,
    ) -> Any:  # noqa: ANN401 - JSON is any shape; callers check it
        response = await http.request(
            method,
            f"{self._base}/cgi-bin/{cgi}.cgi",
            device=self.miner_id,
            op=op,
            timeout_s=timeout_s or self._ep.timeout_s,
            json_body=json_body,
            middlewares=(self._auth,),
            admit=admit,
        )
        if response.status == HTTPStatus.UNAUTHORIZED:
            raise self._refused(response, op)
        if response.status == HTTPStatus.NOT_FOUND:
            raise UnsupportedError(self.miner_id, op, f"{cgi}.cgi answered HTTP 404")
        if response.status != HTTPStatus.OK:
            raise RejectedError(
                self.miner_id,
                op,
                f"{cgi}.cgi answered HTTP {response.status}",
                code=response.status,
            )
        return _loads(response.body, device=self.miner_id, op=op)

    def _refused(self, response: http.Response, op: str) -> DriverError:
        """A 401 after the middleware answered the challenge: stale nonce or bad password."""
        challenge = next(
            (v for k, v in response.headers.items() if k.lower() == "www-authenticate"), ""
        )
        if re.search(r"\bstale\s*=\s*\"?true", challenge, re.IGNORECASE):
            # The password was right but the fresh nonce died at once: renewed once, give up.
            return RejectedError(
                self.miner_id,
                op,
                "digest nonce expired again right after renewal",
                code=HTTPStatus.UNAUTHORIZED,
            )
        return AuthError(
            self.miner_id, op, f"web CGI refused the HTTP Digest credentials of {self._user!r}"
        )


def _loads(body: bytes, *, device: str, op: str) -> Any:  # noqa: ANN401 - JSON is any shape
    """JSON, repairing the malformations cgminer-family firmware is known to emit."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        try:
            return json.loads(cgminer_tcp.repair(text))
        except (ValueError, RecursionError):
            raise ProtocolError(
                device, op, f"unparseable reply ({len(body)} bytes): {text[:60]!r}"
            ) from None
