#!/usr/bin/env bash
# Install everything the tests need (Debian packages, lab prerequisites, a virtualenv with the
# dev extras), check lint and types, and run the whole suite, lab tests included.
# Usage: scripts/test.sh [pytest options]
source "$(dirname "$0")/_common.sh"
mapfile -t PKGS < <(packages_from "$ROOT/scripts/system-packages.txt")
apt_install "${PKGS[@]}"
as_root "$ROOT/scripts/lab-prereqs.sh"
make_venv dev
cd "$ROOT"
echo "==> ruff"
"$VENV/bin/ruff" check rebalancerd
echo "==> mypy --strict"
"$VENV/bin/mypy" rebalancerd
echo "==> pytest"
exec "$VENV/bin/pytest" "$@"
