"""The HTTP Digest auth lighttpd puts in front of a stock Antminer's web CGI (RFC 2617 as
old lighttpd mod_auth does it; RFC 2069 clients too), with nonce expiry and replay checks.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from sim.faults import FaultState

REALM = "antMiner Configuration"
USER = "root"  # the only web user on stock firmware
NONCE_TTL_S = 600.0  # (inferred) how long an issued digest nonce stays valid
MAX_NONCES = 64  # lighttpd keeps no nonce table at all; a bound is enough here

_UNAUTHORIZED_PAGE = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML'
    ' 1.0 Transitional//EN"\n         "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
    '\n<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n <head>\n'
    "  <title>401 Unauthorized</title>\n </head>\n <body>\n  <h1>401 Unauthorized</h1>\n"
    " </body>\n</html>\n"
)  # lighttpd's page, as pyasic #243 shows it


@dataclass(slots=True)
class _Nonce:
    issued_at: float
    last_nc: int = 0


class DigestAuth:
    """lighttpd's HTTP Digest in front of every CGI path (realm "antMiner Configuration",
    qop auth, MD5): nonces it issued, their counts, and the 401s it sends."""

    def __init__(
        self,
        password: str,
        fault: FaultState,
        *,
        time_fn: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.password = password
        self.fault = fault  # the web endpoint's: `expire-sessions` kills every nonce
        self._now = time_fn
        self._rng = rng
        self.challenges = 0  # 401 Digest challenges sent
        self._nonces: dict[str, _Nonce] = {}

    def forget(self) -> None:
        """Drop every nonce issued: the next request is challenged afresh."""
        self._nonces.clear()

    def check(self, request: web.Request) -> web.Response | None:
        """None if the request carries a valid Digest response, else the 401 to send."""
        scheme, _, rest = request.headers.get("Authorization", "").partition(" ")
        params = _auth_params(rest) if scheme.lower() == "digest" else {}
        expected = self._expected_response(request, params)
        if expected is None or not hmac.compare_digest(expected, params.get("response", "")):
            return self._challenge()
        if not self._fresh(params.get("nonce", "")):
            # Right password, but the nonce is not (or no longer) valid: RFC 7616 stale.
            return self._challenge(stale=True)
        if not self._counted(params):
            return self._challenge()  # a replayed request
        return None

    def _expected_response(self, request: web.Request, params: dict[str, str]) -> str | None:
        """The response a client knowing the password computes, None if malformed."""
        uri = params.get("uri", "")
        if (
            params.get("username") != USER
            or params.get("realm") != REALM
            or uri != request.raw_path
            or params.get("algorithm", "MD5").upper() != "MD5"
        ):
            return None
        nonce = params.get("nonce", "")
        ha1 = _md5(f"{USER}:{REALM}:{self.password}")
        ha2 = _md5(f"{request.method}:{uri}")
        qop = params.get("qop")
        if qop == "auth":
            return _md5(
                f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}"
            )
        if qop is None:
            return _md5(f"{ha1}:{nonce}:{ha2}")  # RFC 2069 clients
        return None

    def _fresh(self, nonce: str) -> bool:
        state = self._nonces.get(nonce)
        return (
            state is not None
            and not self.fault.expiring
            and self._now() - state.issued_at <= NONCE_TTL_S
        )

    def _counted(self, params: dict[str, str]) -> bool:
        """qop=auth requests count up per nonce; a count seen before is a replay."""
        if params.get("qop") != "auth":
            return True
        state = self._nonces[params.get("nonce", "")]
        try:
            count = int(params.get("nc", ""), 16)
        except ValueError:
            return False
        if count <= state.last_nc:
            return False
        state.last_nc = count
        return True

    def _challenge(self, *, stale: bool = False) -> web.Response:
        self.challenges += 1
        nonce = f"{self._rng.getrandbits(128):032x}"
        self._nonces[nonce] = _Nonce(self._now())
        while len(self._nonces) > MAX_NONCES:
            del self._nonces[next(iter(self._nonces))]
        # Old lighttpd mod_auth sends exactly realm, nonce and qop; `stale` is RFC 7616's,
        # sent only for a right password with a dead nonce (inferred for this firmware).
        value = f'Digest realm="{REALM}", nonce="{nonce}", qop="auth"'
        if stale:
            value += ", stale=true"
        return web.Response(
            status=401,
            text=_UNAUTHORIZED_PAGE,
            content_type="text/html",
            headers={"WWW-Authenticate": value, "Server": "lighttpd/1.4.32"},
        )


_AUTH_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _auth_params(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _AUTH_PARAM.finditer(text)
    }


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
