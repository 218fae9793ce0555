"""libvirt events: the process-wide libvirt event loop thread, and `HypervisorEvent`, what the
libvirt adapter republishes (domain lifecycle events and its own migration/connection events)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt

LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

# (event, detail) pairs that concern migration
MIGRATION_DETAILS = {
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED): "incoming",
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED): "paused",
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY): "postcopy",
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED): "resumed",
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY): "postcopy",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "migrated",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): "failed",
}


@dataclass(frozen=True, slots=True)
class HypervisorEvent:
    """Something that happened on a host.

    kind: "lifecycle" (from libvirt: `event` is started/suspended/resumed/stopped/..., `detail`
    libvirt's detail code, `migration` a label when the event concerns a migration), or the
    adapter's own "migration-started" / "migration-finished" / "migration-failed" /
    "connection-lost".
    """

    kind: str
    host: str
    vm: str
    event: str = ""
    detail: int = 0
    migration: str = ""
    target: str = ""
    at: float = field(default_factory=time.monotonic)


EventListener = Callable[[HypervisorEvent], None]

_event_loop_lock = threading.Lock()
_event_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Start the process-wide libvirt event loop thread (once). Must run before connections are
    opened for keepalive and domain events to work."""
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None and _event_loop_thread.is_alive():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    time.sleep(0.01)

        _event_loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_loop_thread.start()


def silence_libvirt_stderr() -> None:
    """Stop libvirt printing every error to stderr (errors reach us as exceptions anyway)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
