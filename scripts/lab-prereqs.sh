#!/usr/bin/env bash
# One-time system setup the libvirt lab needs (run as root; idempotent).
set -euo pipefail
# The QEMU driver insists on this account even with user = "root" in qemu.conf.
if ! getent passwd libvirt-qemu >/dev/null; then
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    useradd --system --no-create-home --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
fi
# KVM: load the module where we can; the lab falls back to what /dev/kvm offers.
[ -e /dev/kvm ] || modprobe kvm 2>/dev/null || true
exit 0
