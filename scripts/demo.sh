#!/usr/bin/env bash
# Install what the demo needs (python3-venv and a virtualenv with rebalancerd[demo]: the planner,
# no libvirt, so no compiler) and run it.
# Usage: scripts/demo.sh [rebalancerd demo options, e.g. --duration 20 --json]
source "$(dirname "$0")/_common.sh"
apt_install python3 python3-venv
make_venv demo
exec "$VENV/bin/rebalancerd" demo "$@"
