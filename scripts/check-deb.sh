#!/usr/bin/env bash
# Install the Debian package built by scripts/build-deb.sh and check it the way an operator
# would: dpkg -i, files in place, users and directories, `systemd-analyze verify` of the
# installed units, `rebalancerd --version`, man page, completion, the shipped configs, then
# `dpkg -r` (nothing of the package left but conffiles) and `dpkg -P` (nothing at all).
# Usage: scripts/check-deb.sh [DEB]   (default: the newest build/rebalancerd_*.deb). As root.
source "$(dirname "$0")/_common.sh"
DEB="${1:-$(ls -t "$ROOT"/build/rebalancerd_*.deb 2>/dev/null | head -n1)}"
[ -f "$DEB" ] || { echo "check-deb: no package (run scripts/build-deb.sh first)" >&2; exit 1; }
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
if dpkg-query -W rebalancerd >/dev/null 2>&1; then fail "rebalancerd is already installed"; fi
cleanup() { dpkg -P rebalancerd >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "==> dpkg -i $(basename "$DEB")"
as_root dpkg -i "$DEB"
for f in /usr/bin/rebalancerd /opt/rebalancerd/bin/python /opt/rebalancerd/bin/rebalancerd \
    /usr/lib/systemd/system/rebalancerd.service /usr/lib/systemd/system/rebalancerd-agent.service \
    /usr/lib/sysusers.d/rebalancerd.conf /usr/lib/tmpfiles.d/rebalancerd.conf \
    /etc/rebalancerd/rebalancerd.yaml /etc/rebalancerd/agent.yaml /etc/rebalancerd/policies/balance.yaml \
    /usr/share/man/man1/rebalancerd.1.gz /usr/share/bash-completion/completions/rebalancerd \
    /usr/share/zsh/vendor-completions/_rebalancerd /usr/share/doc/rebalancerd/copyright \
    /usr/share/doc/rebalancerd/changelog.gz /usr/share/rebalancerd/prometheus/alerts.yml \
    /usr/share/rebalancerd/grafana/rebalancerd.json; do
    [ -e "$f" ] || fail "missing $f"
done
echo "==> users and directories"
id rebalancerd >/dev/null || fail "no user rebalancerd"
id rebalancerd-agent >/dev/null || fail "no user rebalancerd-agent"
getent group rebalancerd-admin >/dev/null || fail "no group rebalancerd-admin"
[ "$(stat -c '%U:%G %a' /var/lib/rebalancerd)" = "rebalancerd:rebalancerd 750" ] \
    || fail "/var/lib/rebalancerd: $(stat -c '%U:%G %a' /var/lib/rebalancerd)"
dpkg-query -W -f='${Conffiles}\n' rebalancerd | grep -q /etc/rebalancerd/rebalancerd.yaml \
    || fail "configs are not conffiles"
echo "==> systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/rebalancerd.service \
    /usr/lib/systemd/system/rebalancerd-agent.service
echo "==> rebalancerd --version"
v="$(/usr/bin/rebalancerd --version)"
echo "$v"
[[ "$v" == "rebalancerd $(dpkg-query -W -f='${Version}' rebalancerd | sed 's/-[^-]*$//')" ]] \
    || fail "version: $v"
# the virtualenv is whole: the daemon's and the agent's imports, from /opt only
/opt/rebalancerd/bin/python -I -c 'import libvirt, ortools, rebalancerd.daemon.daemon, rebalancerd.agent, rebalancerd.cli.main as m; assert m.__file__.startswith("/opt/rebalancerd/"), m.__file__'
/usr/bin/rebalancerd validate /etc/rebalancerd/policies >/dev/null || fail "shipped policy does not validate"
/usr/bin/rebalancerd snapshot --generate --hosts 8 --vms 40 -o /tmp/rebalancerd-deb-check.json
/usr/bin/rebalancerd plan --snapshot /tmp/rebalancerd-deb-check.json --time-limit 1 >/dev/null
rm -f /tmp/rebalancerd-deb-check.json
zcat /usr/share/man/man1/rebalancerd.1.gz | head -n1 | grep -q '^.TH REBALANCERD 1' || fail "man page"
bash -n /usr/share/bash-completion/completions/rebalancerd || fail "bash completion"

echo "==> dpkg -r"
as_root dpkg -r rebalancerd
for f in /usr/bin/rebalancerd /opt/rebalancerd /usr/lib/systemd/system/rebalancerd.service \
    /usr/share/man/man1/rebalancerd.1.gz /usr/share/doc/rebalancerd; do
    [ ! -e "$f" ] || fail "left after dpkg -r: $f"
done
[ -f /etc/rebalancerd/rebalancerd.yaml ] || fail "dpkg -r removed a conffile (only purge may)"
echo "==> dpkg -P"
as_root dpkg -P rebalancerd
[ ! -e /etc/rebalancerd ] || fail "left after purge: /etc/rebalancerd ($(ls -A /etc/rebalancerd))"
[ ! -e /var/lib/rebalancerd ] || fail "left after purge: /var/lib/rebalancerd"
trap - EXIT
echo "check-deb: ok"
