"""Grid signals over MQTT (aiomqtt 2.x), acknowledgements and retained status.

Subscribes to `<prefix>/<site>/grid/signals` at QoS 1 with a persistent session (a fixed
client id, clean_session off) so signals sent while we were away are delivered; publishes
acks on `<prefix>/<site>/grid/acks` and status, retained, on `<prefix>/<site>/status` with
an `offline` last will. Reconnects with capped exponential backoff and re-subscribes.
The only module that imports aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
from collections import deque
from typing import Any, Self

import aiomqtt
import structlog

from controller.intake.inbox import Inbox
from controller.record.publish import Ack

log = structlog.get_logger("curtaild.mqtt_signals")

MAX_QUEUED_ACKS = 10_000  # acks kept while the broker is away; oldest dropped beyond
BACKOFF_START_S = 0.5
OPERATION_TIMEOUT_S = 10.0
SHUTDOWN_PUBLISH_S = 2.0


class MqttSignals:
    """One MQTT session for signals in, acks and status out."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        site_id: str,
        host: str,
        port: int,
        prefix: str,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        keepalive_s: int = 30,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._inbox = inbox
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._backoff_max_s = backoff_max_s
        self.client_id = client_id or f"curtaild-{site_id}"
        base = f"{prefix}/{site_id}"
        self.signals_topic = f"{base}/grid/signals"
        self.acks_topic = f"{base}/grid/acks"
        self.status_topic = f"{base}/status"
        self._offline = json.dumps({"state": "offline", "site": site_id}).encode()
        self._acks: deque[bytes] = deque(maxlen=MAX_QUEUED_ACKS)
        self._status: bytes | None = None  # the latest; kept to replace a last will
        self._status_sent = False
        self._outgoing = asyncio.Event()
        self.connected = asyncio.Event()
        self.connects = 0
        self.received = 0
        self.errors = 0  # unexpected failures survived (a metric)
        self._down_logged = False

    # -- Publisher -------------------------------------------------------------------------

    def ack(self, ack: Ack) -> None:
        if len(self._acks) == self._acks.maxlen:
            log.warning("ack queue full; dropping the oldest", kept=self._acks.maxlen)
        self._acks.append(json.dumps(ack.as_json()).encode())
        self._outgoing.set()

    def status(self, status: dict[str, Any]) -> None:
        self._status = json.dumps(status).encode()
        self._status_sent = False
        self._outgoing.set()

    # -- connection ------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as err:
                # Health is a state: warn once when the broker goes away, then stay quiet.
                if self.connected.is_set() or not self._down_logged:
                    log.warning(
                        "mqtt broker unreachable; retrying",
                        host=self._host,
                        port=self._port,
                        error=str(err),
                    )
                    self._down_logged = True
                else:
                    log.debug("mqtt still unreachable", error=str(err))
            except Exception as err:  # the adapter must outlive its own bugs
                self.errors += 1
                log.exception("mqtt session failed; reconnecting", error=repr(err))
            if self.connected.is_set():
                self.connected.clear()
                backoff = BACKOFF_START_S
            # Jitter spreads reconnects when many daemons lose the same broker.
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # noqa: S311
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _session(self) -> None:
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.client_id,
            username=self._username,
            password=self._password,
            clean_session=False,
            keepalive=self._keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            will=aiomqtt.Will(self.status_topic, self._offline, qos=1, retain=True),
            tls_context=ssl.create_default_context() if self._tls else None,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        await client.__aenter__()
        try:
            await self._connected(client)
        finally:
            # A broker that never acknowledges the DISCONNECT (amqtt does not) must not
            # hold up a stop: aiomqtt would wait its whole operation timeout.
            try:
                async with asyncio.timeout(SHUTDOWN_PUBLISH_S):
                    await client.__aexit__(None, None, None)
            except (TimeoutError, aiomqtt.MqttError):
                log.debug("mqtt disconnect not acknowledged; dropping the connection")

    async def _connected(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.signals_topic, qos=1)
        self.connects += 1
        self.connected.set()
        self._down_logged = False
        log.info(
            "mqtt connected",
            host=self._host,
            port=self._port,
            topic=self.signals_topic,
            connects=self.connects,
        )
        self._status_sent = False  # the broker may hold our last will: say we are back
        self._outgoing.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="curtaild.mqtt_receive")
                tg.create_task(self._send(client), name="curtaild.mqtt_send")
        except ExceptionGroup as group:
            lost = [e for e in group.exceptions if isinstance(e, aiomqtt.MqttError)]
            if len(lost) == len(group.exceptions):
                raise lost[0] from None
            raise
        except asyncio.CancelledError:
            # Shutting down: say so, retained, before the clean disconnect (the will
            # only covers unclean ones).
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(
                    self.status_topic,
                    self._offline,
                    qos=1,
                    retain=True,
                    timeout=SHUTDOWN_PUBLISH_S,
                )
            raise

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            raw = (
                bytes(payload)
                if isinstance(payload, (bytes, bytearray))
                else str(payload or "").encode()
            )
            self.received += 1
            try:
                self._inbox.submit_mqtt(raw)
            except Exception:  # the inbox contains its own; this is the last net
                self.errors += 1
                log.exception("mqtt message handling failed", topic=str(message.topic))

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._outgoing.wait()
            self._outgoing.clear()
            while self._acks:
                await client.publish(self.acks_topic, self._acks[0], qos=1)
                _raise_if_cancelled()
                self._acks.popleft()  # only once the broker took it
            status = self._status
            if status is not None and not self._status_sent:
                await client.publish(self.status_topic, status, qos=1, retain=True)
                _raise_if_cancelled()
                self._status_sent = status is self._status  # unless a newer one came meanwhile


def _raise_if_cancelled() -> None:
    """aiomqtt waits for a PUBACK with asyncio.wait_for, which on Python 3.11 swallows a
    cancellation that arrives as the PUBACK does (fixed in 3.12): the task then waits on
    forever and a stop hangs. Seen with amqtt as the broker."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class GridSide:
    """The grid operator's end of the contract: publishes sealed signals, collects acks.

    Used by `curtaild demo`'s scripted operator and by tests; it lives here because this
    is the only module allowed to import aiomqtt.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        site_id: str,
        prefix: str = "curtaild",
        client_id: str = "grid-operator",
    ) -> None:
        base = f"{prefix}/{site_id}"
        self.signals_topic = f"{base}/grid/signals"
        self.acks_topic = f"{base}/grid/acks"
        self.status_topic = f"{base}/status"
        self._client = aiomqtt.Client(host, port, identifier=client_id, timeout=OPERATION_TIMEOUT_S)
        self.acks: list[dict[str, Any]] = []
        self.status: dict[str, Any] | None = None
        self.ack_arrived = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        await self._client.subscribe(self.acks_topic, qos=1)
        await self._client.subscribe(self.status_topic, qos=1)
        self._listener = asyncio.create_task(self._listen(), name="grid-side.listen")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.__aexit__(None, None, None)

    async def publish(self, payload: bytes) -> None:
        await self._client.publish(self.signals_topic, payload, qos=1)

    async def wait_ack(
        self,
        signal_id: str | None,
        revision: int | None,
        status: str | None = None,
        timeout_s: float = 10.0,
    ) -> dict[str, Any]:
        """The first ack for (id, revision) [with this status]; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s):
            while True:
                for ack in self.acks:
                    if (
                        ack.get("id") == signal_id
                        and ack.get("revision") == revision
                        and (status is None or ack.get("status") == status)
                    ):
                        return ack
                self.ack_arrived.clear()
                await self.ack_arrived.wait()

    async def _listen(self) -> None:
        async for message in self._client.messages:
            payload = message.payload
            raw = bytes(payload) if isinstance(payload, (bytes, bytearray)) else b"{}"
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if message.topic.matches(self.acks_topic):
                self.acks.append(data)
                self.ack_arrived.set()
            else:
                self.status = data
