#!/usr/bin/env bash
# Install what the demo needs (Debian packages to build libvirt-python, a virtualenv) and run it.
# Usage: scripts/demo.sh [rebalancerd demo options, e.g. --duration 20 --json]
source "$(dirname "$0")/_common.sh"
apt_install python3 python3-venv python3-dev gcc pkg-config libvirt-dev
make_venv demo
exec "$VENV/bin/rebalancerd" demo "$@"
