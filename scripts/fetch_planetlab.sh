#!/bin/sh
# Fetch the ten PlanetLab days (beloglazov/planetlab-workload-traces) into a cache folder
# outside git, one sub-folder per day, for benchmarks/planetlab.py:
#   scripts/fetch_planetlab.sh [DEST]        (default: $HOME/.cache/rebalancerd/planetlab)
#   REBALANCERD_PLANETLAB_DIR=DEST .venv/bin/python benchmarks/planetlab.py
# Set PLANETLAB_GIT to a local clone (or bare repository) to skip the network.
set -eu
DEST=${1:-${HOME}/.cache/rebalancerd/planetlab}
SRC=${PLANETLAB_GIT:-}
TMP=
if [ -z "$SRC" ]; then
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    git clone --quiet --depth 1 --bare https://github.com/beloglazov/planetlab-workload-traces "$TMP/repo"
    SRC=$TMP/repo
fi
mkdir -p "$DEST"
for day in $(git -C "$SRC" ls-tree --name-only HEAD); do
    case $day in 2011[0-9][0-9][0-9][0-9]) ;; *) continue ;; esac
    if [ -d "$DEST/$day" ]; then echo "$day: present"; continue; fi
    mkdir -p "$DEST/$day.part"
    git -C "$SRC" archive HEAD "$day" | tar -x -C "$DEST/$day.part"
    mv "$DEST/$day.part/$day" "$DEST/$day" && rmdir "$DEST/$day.part"
    echo "$day: $(ls "$DEST/$day" | wc -l) VMs"
done
