#!/usr/bin/env bash
# Build the rebalancerd Debian package with dpkg-deb (no debhelper): a virtualenv with the
# daemon and the agent under /opt/rebalancerd (pinned by constraints.txt, from PyPI), the
# /usr/bin/rebalancerd wrapper, the systemd units, sysusers.d/tmpfiles.d, example configs in
# /etc/rebalancerd (conffiles), the man page and shell completion generated from the parser,
# and the docs. Needs the Debian packages of scripts/system-packages.txt (python3.11-venv,
# gcc, pkg-config, libvirt-dev to build libvirt-python).
# Usage: scripts/build-deb.sh [OUTDIR]   (default build/; prints the .deb's path last)
source "$(dirname "$0")/_common.sh"
OUT="$(realpath -m "${1:-$ROOT/build}")"
PY=/usr/bin/python3.11
VERSION="$("$PY" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
DEBVER="$VERSION-1"
ARCH="$(dpkg --print-architecture)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
WORK="$(mktemp -d /tmp/rebalancerd-deb.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
VENV_AT=/opt/rebalancerd
V="$STAGE$VENV_AT"
START=$(date +%s)

echo "==> virtualenv $VENV_AT (rebalancerd[daemon] $VERSION, constraints.txt)"
"$PY" -m venv "$V"
"$V/bin/python" -m pip install -q --no-warn-script-location -c "$ROOT/constraints.txt" "$ROOT[daemon]"
# the wheel was built from the checkout; drop pip's build traces and byte code (postinst compiles)
find "$V" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -f "$V"/bin/activate* "$V"/bin/Activate.ps1
find "$V" -name direct_url.json -delete
# relocate: the scripts' shebangs and pyvenv.cfg name the staging path
grep -rlI --null "$STAGE" "$V/bin" "$V/pyvenv.cfg" | xargs -0 -r sed -i "s#$STAGE##g"
if grep -rqI "$STAGE" "$V"; then
    echo "build-deb: staging path left in:" >&2; grep -rlI "$STAGE" "$V" | head >&2; exit 1
fi

echo "==> files"
install -D -m 0755 /dev/stdin "$STAGE/usr/bin/rebalancerd" <<'SH'
#!/bin/sh
exec /opt/rebalancerd/bin/rebalancerd "$@"
SH
install -D -m 0644 -t "$STAGE/usr/lib/systemd/system" "$ROOT"/systemd/*.service
install -D -m 0644 "$ROOT/packaging/debian/sysusers.conf" "$STAGE/usr/lib/sysusers.d/rebalancerd.conf"
install -D -m 0644 "$ROOT/packaging/debian/tmpfiles.conf" "$STAGE/usr/lib/tmpfiles.d/rebalancerd.conf"
ETC="$STAGE/etc/rebalancerd"
install -D -m 0644 "$ROOT/deploy/config/rebalancerd.example.yaml" "$ETC/rebalancerd.yaml"
install -D -m 0644 "$ROOT/deploy/agent.example.yaml" "$ETC/agent.yaml"
# the shipped policy plans and logs but never migrates until an operator removes dry_run
{ cat "$ROOT/policies/balance.yaml"
  printf '\n# Shipped by the Debian package: plan and log only. Remove once the plans look right.\ndry_run: true\n'
} | install -D -m 0644 /dev/stdin "$ETC/policies/balance.yaml"
SHARE="$STAGE/usr/share/rebalancerd"
install -D -m 0644 "$ROOT/policies/schema.json" "$SHARE/policies/schema.json"
install -D -m 0644 -t "$SHARE/policies" "$ROOT"/policies/*.yaml
install -D -m 0644 -t "$SHARE/prometheus" "$ROOT"/deploy/prometheus/*.yml
install -D -m 0644 -t "$SHARE/grafana" "$ROOT"/deploy/grafana/*.json
install -D -m 0644 -t "$SHARE/mosquitto" "$ROOT"/deploy/mosquitto/*
DOC="$STAGE/usr/share/doc/rebalancerd"
install -D -m 0644 -t "$DOC" "$ROOT/README.md" "$ROOT/constraints.txt"
install -D -m 0644 -t "$DOC/docs" "$ROOT"/docs/*.md
[ -d "$ROOT/docs/img" ] && install -D -m 0644 -t "$DOC/docs/img" "$ROOT"/docs/img/*.png
gzip -9n -c "$ROOT/CHANGELOG.md" > "$DOC/changelog.gz"
{ echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: rebalancerd"; echo; echo "Files: *"; echo "License: Apache-2.0"; echo
  sed 's/^$/./; s/^/ /' "$ROOT/LICENSE"; } > "$DOC/copyright"
MAN="$STAGE/usr/share/man/man1"; mkdir -p "$MAN"
"$V/bin/python" -m rebalancerd.cli.main manpage | gzip -9n > "$MAN/rebalancerd.1.gz"
install -d "$STAGE/usr/share/bash-completion/completions" "$STAGE/usr/share/zsh/vendor-completions"
"$V/bin/python" -m rebalancerd.cli.main completion bash > "$STAGE/usr/share/bash-completion/completions/rebalancerd"
"$V/bin/python" -m rebalancerd.cli.main completion zsh > "$STAGE/usr/share/zsh/vendor-completions/_rebalancerd"
find "$V" -name __pycache__ -type d -prune -exec rm -rf {} +

echo "==> control"
install -d "$STAGE/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$ROOT/packaging/debian/$s" "$STAGE/DEBIAN/$s"; done
(cd "$STAGE" && find etc -type f | sort | sed 's#^#/#') > "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CTRL
Package: rebalancerd
Version: $DEBVER
Architecture: $ARCH
Maintainer: rebalancerd maintainers <rebalancerd@localhost>
Installed-Size: $SIZE
Depends: python3.11, libvirt0, systemd
Recommends: libvirt-clients
Suggests: mosquitto, prometheus
Section: admin
Priority: optional
Homepage: https://github.com/rebalancerd/rebalancerd
Description: policy-driven live-migration balancer for libvirt/KVM fleets
 rebalancerd keeps a fleet of libvirt/KVM hypervisors balanced by live migration under YAML
 policies: spreads load, drains hosts for maintenance, evacuates degraded hosts and
 consolidates VMs to save energy. This package holds the daemon (rebalancerd.service, on a
 control node) and the telemetry agent (rebalancerd-agent.service, on every hypervisor) in a
 private virtualenv under /opt/rebalancerd. Neither unit is enabled on install.
CTRL
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$OUT"
DEB="$OUT/rebalancerd_${DEBVER}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "==> built in $(( $(date +%s) - START )) s: $(du -h "$DEB" | cut -f1), installed $((SIZE / 1024)) MiB"
echo "$DEB"
