"""MQTT edge (aiomqtt, MQTT v5): broker settings, the collector's subscription stream, and the
agent's publisher. Everything about sockets, TLS and reconnection lives here; decoding and
validation stay in ``rebalancerd.telemetry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog
from aiomqtt import ProtocolVersion, TLSParameters, Will
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rebalancerd.observability import NullMetrics
from rebalancerd.ports import Message, MetricsSink

log = structlog.get_logger("rebalancerd.mqtt")


class MqttConfigError(ValueError):
    """Broker settings that cannot be used; one line."""


class BrokerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` (plain, default port 1883) or ``mqtts://host[:port]`` (TLS, 8883)."""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    """Read the password from this file (first line) instead of putting it in the config."""
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls_insecure: bool = False
    """Skip the server host name check (only for lab certificates)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("broker url must look like mqtt://host:port or mqtts://host:port")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("broker url has a bad port") from None
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError) as e:
                msg = f"cannot read password_file {self.password_file}: {e}"
                raise MqttConfigError(msg) from None
        return self.password

    def client_kwargs(self, *, will: Will | None = None) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client``."""
        kw: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.resolved_password(),
            "identifier": self.client_id,
            "protocol": ProtocolVersion.V5,
            "keepalive": self.keepalive_s,
            "timeout": 10.0,
            "will": will,
        }
        if self.tls:
            for f in (self.ca_file, self.cert_file, self.key_file):
                if f is not None and not f.is_file():
                    raise MqttConfigError(f"TLS file {f} does not exist")
            kw["tls_params"] = TLSParameters(
                ca_certs=str(self.ca_file) if self.ca_file else None,
                certfile=str(self.cert_file) if self.cert_file else None,
                keyfile=str(self.key_file) if self.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if self.tls_insecure:
                kw["tls_insecure"] = True
        return kw


class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2^n))."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        hi = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self.rng.uniform(hi / 2, hi)

    def reset(self) -> None:
        self.attempt = 0


def _payload_bytes(p: Any) -> bytes:
    if isinstance(p, bytes):
        return p
    if isinstance(p, bytearray):
        return bytes(p)
    if p is None:
        return b""
    return str(p).encode()


def _capturing_queue(
    holder: list[asyncio.Queue[aiomqtt.Message]],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt that hands us its instance, so a batch can be drained with
    get_nowait() instead of one task per message."""

    class _Queue(asyncio.Queue[aiomqtt.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            holder.append(self)

    return _Queue


DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
"""The collector's default payload cap (`CollectorSettings.max_payload_bytes`; a test keeps
them equal)."""
PACKET_OVERHEAD_BYTES = 1024
"""Room for the MQTT fixed header, topic and properties on top of the payload cap."""


class MqttStream:
    """``ports.MessageStream`` over MQTT: subscribes (QoS 1), yields batches of
    ``(topic, payload)`` drained from aiomqtt's bounded queue, and reconnects and resubscribes
    with jittered backoff whenever the broker goes away. Runs until cancelled."""

    def __init__(
        self,
        broker: BrokerSettings,
        topics: list[str],
        metrics: MetricsSink | None = None,
        *,
        max_batch: int = 512,
        max_queued: int = 20_000,
        backoff: Backoff | None = None,
        session_expiry_s: int = 0,
        fast_path: bool = True,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """session_expiry_s > 0 keeps an MQTT v5 session (needs broker.client_id): reports sent
        while the collector is away are delivered when it comes back (old ones are then
        rejected by the clock-skew rule, never used)."""
        if session_expiry_s and not broker.client_id:
            raise MqttConfigError("a persistent MQTT session needs a client_id")
        self.session_expiry_s = session_expiry_s
        self.max_packet_bytes = max_payload_bytes + PACKET_OVERHEAD_BYTES
        """Told to the broker (MQTT 5 Maximum Packet Size): it drops larger messages instead of
        delivering them, so an oversized report never costs the daemon its memory."""
        self.fast_path = fast_path
        """Hook paho's on_message directly (aiomqtt 2.x internals) instead of aiomqtt's
        per-message queue; falls back to the public API when the internals differ."""
        self.broker = broker
        self.topics = topics
        self.metrics = metrics or NullMetrics()
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.connected = asyncio.Event()
        self.connections = 0

    def _fast_callback(self, inbox: list[Message], wake: asyncio.Event) -> Any:
        """paho on_message that only appends ``(topic, payload)``: no aiomqtt Message/Topic
        objects and no task per message. Bounded by ``max_queued`` (excess counted)."""
        limit = self.max_queued
        metrics = self.metrics

        def on_message(_client: Any, _userdata: Any, m: Any) -> None:
            if len(inbox) >= limit:
                metrics.inc("telemetry_rejected_total", reason="queue_full")
                return
            try:
                inbox.append((m.topic, m.payload))
            except UnicodeDecodeError:
                inbox.append(("<invalid utf-8>", b""))
            if not wake.is_set():
                wake.set()

        return on_message

    async def _fast_batches(
        self, client: aiomqtt.Client, inbox: list[Message], wake: asyncio.Event
    ) -> AsyncIterator[list[Message]]:
        async def watch() -> None:
            # Raises MqttError on disconnect. Messages that reached aiomqtt's own queue (those
            # a resumed session delivered before our callback was installed) are forwarded.
            async for m in client.messages:
                inbox.append((m.topic.value, _payload_bytes(m.payload)))
                wake.set()

        watcher = asyncio.create_task(watch())
        waiter: asyncio.Task[bool] | None = None
        try:
            while True:
                if not inbox:
                    wake.clear()
                    waiter = asyncio.create_task(wake.wait())
                    done, _ = await asyncio.wait(
                        {waiter, watcher}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if watcher in done:
                        watcher.result()
                        raise aiomqtt.MqttError("disconnected")
                    continue
                batch = inbox[: self.max_batch]
                del inbox[: self.max_batch]
                yield batch
        finally:
            # cancel, never await: awaiting them under suppress(CancelledError) would also
            # swallow a cancel of the consuming task that lands there (shutdown would hang)
            for t in (waiter, watcher):
                if t is not None:
                    t.cancel()
                    t.add_done_callback(_retrieve)

    def _session_kwargs(self) -> dict[str, Any]:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = self.max_packet_bytes
        if not self.session_expiry_s:
            return {"properties": props}
        props.SessionExpiryInterval = self.session_expiry_s
        return {"clean_start": False, "properties": props}

    async def batches(self) -> AsyncIterator[list[Message]]:
        while True:
            holder: list[asyncio.Queue[aiomqtt.Message]] = []
            self.metrics.inc("telemetry_reconnects_total")
            try:
                async with aiomqtt.Client(
                    **self.broker.client_kwargs(),
                    queue_type=_capturing_queue(holder),
                    max_queued_incoming_messages=self.max_queued,
                    **self._session_kwargs(),
                ) as client:
                    paho_client = getattr(client, "_client", None) if self.fast_path else None
                    inbox: list[Message] = []
                    wake = asyncio.Event()
                    if paho_client is not None and hasattr(paho_client, "on_message"):
                        # A resumed session may already have delivered messages into aiomqtt's
                        # queue: take them first (in order), then hook paho, with no await in
                        # between so nothing can slip past or overtake them.
                        early = holder[0]
                        while not early.empty():
                            m = early.get_nowait()
                            inbox.append((m.topic.value, _payload_bytes(m.payload)))
                        paho_client.on_message = self._fast_callback(inbox, wake)
                    else:
                        paho_client = None
                    for t in self.topics:
                        await client.subscribe(t, qos=1)
                    self.connections += 1
                    self.backoff.reset()
                    self.metrics.set("telemetry_connected", 1)
                    self.connected.set()
                    log.info("mqtt_subscribed", broker=self.broker.url, topics=self.topics)
                    if paho_client is not None:
                        async for fast_batch in self._fast_batches(client, inbox, wake):
                            yield fast_batch
                        continue
                    queue = holder[0]
                    async for first in client.messages:
                        batch: list[Message] = [(first.topic.value, _payload_bytes(first.payload))]
                        while len(batch) < self.max_batch:
                            try:
                                m = queue.get_nowait()
                            except asyncio.QueueEmpty:
                                break
                            batch.append((m.topic.value, _payload_bytes(m.payload)))
                        yield batch
            except aiomqtt.MqttError as e:
                self.connected.clear()
                self.metrics.set("telemetry_connected", 0)
                delay = self.backoff.next()
                log.warning(
                    "mqtt_disconnected", broker=self.broker.url, error=str(e), retry_in_s=delay
                )
                await asyncio.sleep(delay)


class Publisher:
    """The agent's connection: Last Will ``offline`` (retained), ``online`` on connect, QoS 1
    telemetry. ``publish`` raises aiomqtt.MqttError when the broker is gone; the agent
    reconnects."""

    def __init__(self, broker: BrokerSettings, status_topic: str, host: str) -> None:
        self.broker = broker
        self.status_topic = status_topic
        self.host = host
        self._client: aiomqtt.Client | None = None

    def _status(self, status: str) -> bytes:
        return f'{{"v":1,"kind":"status","host":"{self.host}","status":"{status}"}}'.encode()

    async def __aenter__(self) -> Publisher:
        will = Will(self.status_topic, self._status("offline"), qos=1, retain=True)
        self._client = aiomqtt.Client(**self.broker.client_kwargs(will=will))
        await self._client.__aenter__()
        await self._client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if exc[0] is None or exc[0] is asyncio.CancelledError:
                await client.publish(
                    self.status_topic, self._status("offline"), qos=1, retain=True, timeout=2.0
                )
        except aiomqtt.MqttError:
            pass
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        await self._client.publish(topic, payload, qos=1)


__all__ = ["Backoff", "BrokerSettings", "MqttConfigError", "MqttStream", "Publisher"]


def _retrieve(t: asyncio.Future[Any]) -> None:
    """Done callback of a helper task cancelled without being awaited: fetch its outcome so
    asyncio does not log "exception was never retrieved" (a disconnect's MqttError)."""
    if not t.cancelled():
        t.exception()
