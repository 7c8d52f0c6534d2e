"""HTTP for device APIs (Braiins OS+ REST, stock Antminer CGI), with typed errors.

One pooled aiohttp session per event loop is shared by every driver: a fleet of HTTP
miners keeps one keep-alive connection each instead of a session each. Deadlines are the
coarse ones of `drivers.deadline` (a timer per request would cost more than the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from drivers.deadline import within
from drivers.errors import DeviceTimeoutError, ProtocolError, UnreachableError
from drivers.transport import admission

MAX_BODY_BYTES = 1 << 20  # a device reply larger than this is garbage
KEEPALIVE_S = 15.0  # idle connections to miners are cheap but not free

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self, *, device: str, op: str) -> Any:  # noqa: ANN401 - JSON is any shape
        """The body as JSON, or a ProtocolError naming what came instead."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise ProtocolError(
                device, op, f"HTTP {self.status}: not JSON: {self.body[:60]!r}"
            ) from None


def origin(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 literal in brackets as URLs want it."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def session() -> aiohttp.ClientSession:
    """The shared session of the running loop, created on first use."""
    loop = asyncio.get_running_loop()
    current = _sessions.get(loop)
    if current is None or current.closed:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=2, keepalive_timeout=KEEPALIVE_S, enable_cleanup_closed=True
        )
        # No session-wide timeout: every request has its own coarse deadline.
        current = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            raise_for_status=False,
            auto_decompress=True,
        )
        _sessions[loop] = current
    return current


async def close_sessions() -> None:
    """Close the running loop's shared session (the daemon calls this on shutdown)."""
    current = _sessions.pop(asyncio.get_running_loop(), None)
    if current is not None and not current.closed:
        await current.close()


async def request(
    method: str,
    url: str,
    *,
    device: str,
    op: str,
    timeout_s: float,
    json_body: object = None,
    headers: Mapping[str, str] | None = None,
    middlewares: Sequence[aiohttp.ClientMiddlewareType] = (),
    admit: bool = True,
) -> Response:
    """One HTTP request under a deadline; the status is the caller's to judge.

    `admit=False` skips the admission gate, for a request whose reply is known to take
    tens of seconds of the device's time, not ours (a stock Antminer answers a config
    save only after restarting its miner): holding a place for that long would starve
    every other request of the fleet.
    """
    gate: contextlib.AbstractAsyncContextManager[None] = (
        admission.gate() if admit else contextlib.nullcontext()
    )
    try:
        async with gate:
            with within(timeout_s):
                async with session().request(
                    method,
                    url,
                    json=json_body,
                    headers=headers,
                    middlewares=tuple(middlewares),
                ) as reply:
                    # read(n) returns what has arrived so far, not the whole body: collect to
                    # the end, capped.
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in reply.content.iter_any():
                        size += len(chunk)
                        if size > MAX_BODY_BYTES:
                            raise ProtocolError(
                                device, op, f"reply larger than {MAX_BODY_BYTES} bytes"
                            )
                        chunks.append(chunk)
                    return Response(reply.status, b"".join(chunks), dict(reply.headers))
    except TimeoutError:
        raise DeviceTimeoutError(device, op, f"no complete reply within {timeout_s:g} s") from None
    except aiohttp.ClientConnectorError as err:
        raise UnreachableError(device, op, f"{err.host}:{err.port}: {err.strerror}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as err:
        raise ProtocolError(device, op, f"connection broke mid-reply: {err}") from None
    except aiohttp.ClientResponseError as err:
        raise ProtocolError(device, op, f"malformed HTTP reply: {err.message}") from None
    except aiohttp.ClientError as err:
        raise UnreachableError(device, op, f"{type(err).__name__}: {err}") from None
