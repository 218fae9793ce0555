"""Redfish power driver: ``ComputerSystem.Reset`` and ``PowerState`` over HTTP(S).

The stdlib ``http.client`` in a worker thread, with a socket timeout per request and a
deadline per call; basic auth from a password file; TLS verified unless ``verify_tls`` is off
(a lab BMC with a self-signed certificate: better give its ``ca_file``).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rebalancerd.adapters.power_common import one_line, read_secret
from rebalancerd.ports import PowerError, PowerState

MAX_BODY_BYTES = 1024 * 1024
_ON = {"on", "poweringoff"}
"""PoweringOff still draws power and may still run guests: it counts as on."""
_OFF = {"off"}


@dataclass(frozen=True, slots=True)
class RedfishTarget:
    url: str
    """Base URL of the BMC, e.g. https://10.0.0.5 (http only in labs)."""
    username: str
    password_file: str
    system: str = ""
    """The ComputerSystem path (/redfish/v1/Systems/1); '' = the first member of Systems."""
    verify_tls: bool = True
    ca_file: str | None = None


class RedfishPower:
    """PowerDriver over Redfish for the hosts in `targets`."""

    driver = "redfish"

    def __init__(self, targets: Mapping[str, RedfishTarget], *, timeout_s: float = 20.0) -> None:
        self.targets = dict(targets)
        self.timeout_s = timeout_s
        self._systems: dict[str, str] = {}

    def _target(self, host: str) -> RedfishTarget:
        t = self.targets.get(host)
        if t is None:
            raise PowerError(f"redfish: no BMC configured for host {host}")
        return t

    def _request(
        self, t: RedfishTarget, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, Any]:
        parts = urlsplit(t.url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=t.ca_file)
            if not t.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=self.timeout_s, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self.timeout_s)
        cred = f"{t.username}:{read_secret(t.password_file)}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(cred).decode(),
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_BODY_BYTES + 1)
        finally:
            conn.close()
        if len(raw) > MAX_BODY_BYTES:
            raise PowerError(f"answer larger than {MAX_BODY_BYTES} bytes")
        parsed: Any = None
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        return resp.status, parsed

    async def _call(
        self, host: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        t = self._target(host)
        try:
            status, parsed = await asyncio.wait_for(
                asyncio.to_thread(self._request, t, method, path, body), self.timeout_s + 1
            )
        except TimeoutError:
            raise PowerError(
                f"redfish {host} ({t.url}): no answer within {self.timeout_s:g}s"
            ) from None
        except PowerError as e:
            raise PowerError(f"redfish {host} ({t.url}): {e}") from None
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            raise PowerError(
                f"redfish {host} ({t.url}): {one_line(str(e) or type(e).__name__)}"
            ) from None
        if status in (401, 403):
            raise PowerError(f"redfish {host} ({t.url}): credentials refused (HTTP {status})")
        if not 200 <= status < 300:
            raise PowerError(f"redfish {host} ({t.url}): {method} {path}: HTTP {status}")
        return parsed

    async def _system(self, host: str) -> str:
        t = self._target(host)
        if t.system:
            return t.system
        if host in self._systems:
            return self._systems[host]
        doc = await self._call(host, "GET", "/redfish/v1/Systems")
        try:
            path = str(doc["Members"][0]["@odata.id"])
        except (KeyError, IndexError, TypeError):
            raise PowerError(f"redfish {host} ({t.url}): no ComputerSystem in Systems") from None
        self._systems[host] = path
        return path

    async def power_state(self, host: str) -> PowerState:
        doc = await self._call(host, "GET", await self._system(host))
        state = doc.get("PowerState") if isinstance(doc, dict) else None
        if not isinstance(state, str):
            raise PowerError(f"redfish {host}: the system resource has no PowerState")
        low = state.lower()
        if low in _ON:
            return PowerState.ON
        if low in _OFF:
            return PowerState.OFF
        if low == "poweringon":
            return PowerState.UNKNOWN
        raise PowerError(f"redfish {host}: unexpected PowerState {state[:40]!r}")

    async def _reset(self, host: str, kind: str) -> None:
        path = await self._system(host) + "/Actions/ComputerSystem.Reset"
        await self._call(host, "POST", path, {"ResetType": kind})

    async def power_on(self, host: str) -> None:
        await self._reset(host, "On")

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        await self._reset(host, "ForceOff" if hard else "GracefulShutdown")
