#!/usr/bin/env python3
"""rebalancerd libvirt lab: 2-N real libvirtd + QEMU "hypervisor hosts" on one machine.

Each simulated host is one libvirtd running as PID 1's child in its own PID, mount, UTS and cgroup
namespaces, inside its own network namespace, with private libvirt state directories bind-mounted
over the standard paths. The hosts share a private /24 that exists only inside the namespaces (a
bridge in a namespace of its own); the root namespace talks to each daemon over its unix socket
and the daemons talk to each other over TCP. Guests are tiny diskless SeaBIOS VMs, or a "dirty"
guest booting a 512-byte boot sector (dirty.S) that keeps writing RAM.

Usage (as root):
    python3 deploy/lab/lab.py up --hosts 3 --dir /tmp/rbl [--json]
    python3 deploy/lab/lab.py status --dir /tmp/rbl [--json]
    python3 deploy/lab/lab.py define-guest --dir /tmp/rbl --host h1 --name vm1 [--memory 128]
        [--dirty]
    python3 deploy/lab/lab.py kill-libvirtd --dir /tmp/rbl --host h2      (fault injection)
    python3 deploy/lab/lab.py restart-libvirtd --dir /tmp/rbl --host h2
    python3 deploy/lab/lab.py link --dir /tmp/rbl --host h2 down|up      (fault injection)
    python3 deploy/lab/lab.py down --dir /tmp/rbl

Standard library only. Everything the lab creates carries a random per-lab prefix (network
namespaces, cgroups, host names), recorded in <dir>/lab.json, so two labs or a leftover never
collide and `down` removes exactly what `up` created. See docs/lab.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DIRTY_SOURCE = HERE / "dirty.S"
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
STATE_FILE = "lab.json"
DEFAULT_CACHE = Path(os.environ.get("REBALANCERD_LAB_CACHE", "/var/cache/rebalancerd-lab"))
SUBNET = "10.231.0"  # exists only inside the lab's namespaces; each lab has its own bridge netns
MIGRATION_SUBNET = "10.232.0"  # the dedicated migration link (own bridge netns, `mig0` per host)
FIRST_HOST_OCTET = 11
LIBVIRT_PATHS = {
    # per-host directory name -> path it is bind-mounted over inside the host's mount namespace
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
REQUIRED_TOOLS = ("libvirtd", "virsh", "qemu-system-x86_64", "ip", "unshare", "nsenter", "as", "ld")
READY_TIMEOUT_S = 60.0
MIB = 1 << 20


class LabError(Exception):
    """The lab could not be brought up or acted on (one-line reason)."""


# --------------------------------------------------------------------------------------------
# small helpers


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{' '.join(cmd)}: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc


def load_state(lab_dir: Path) -> dict[str, Any]:
    path = lab_dir / STATE_FILE
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise LabError(f"no lab at {lab_dir} ({path} missing)") from None


def save_state(state: dict[str, Any]) -> None:
    path = Path(state["dir"]) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def cgroup_mounts() -> list[tuple[Path, str, str]]:
    """(mount point, fstype, mount options for a remount) of every cgroup hierarchy."""
    result = []
    skip = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "nsdelegate"}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _src, mnt, fstype, opts, *_ = line.split()
        if fstype not in ("cgroup", "cgroup2"):
            continue
        keep = [o for o in opts.split(",") if o not in skip]
        if fstype == "cgroup" and not any(not o.startswith("name=") for o in keep):
            keep.insert(0, "none")  # a named hierarchy without controllers (name=systemd)
        result.append((Path(mnt), fstype, ",".join(keep)))
    return result


def cgroup_dirs(name: str) -> list[Path]:
    return [mnt / name for mnt, _t, _o in cgroup_mounts()]


def cgroup_procs(path: Path) -> set[int]:
    """PIDs in a cgroup and all its descendants."""
    pids: set[int] = set()
    if not path.is_dir():
        return pids
    for root, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                text = (Path(root) / "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(p) for p in text.split())
    return pids


def remove_cgroup_tree(path: Path) -> None:
    if not path.is_dir():
        return
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(Path(root) / d)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ensure_qemu_user() -> None:
    """The QEMU driver refuses to load without the libvirt-qemu account ("Failed to parse user
    'libvirt-qemu'"), even with user = "root"; libvirt-daemon-system, which creates it, is not
    needed otherwise."""
    try:
        pwd.getpwnam("libvirt-qemu")
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/libvirt",
            "--shell",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ]
    )


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, cgroups, mounts)")
    missing = [
        t for t in REQUIRED_TOOLS if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()
    ]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (see docs/lab.md for the packages)")
    if not cgroup_mounts():
        raise LabError("no cgroup filesystem mounted under /sys/fs/cgroup")


def tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


# --------------------------------------------------------------------------------------------
# guests


def build_dirty_image(out_dir: Path, dirty_mib: int = 64) -> Path:
    """Assemble dirty.S into a 512-byte boot sector and pad it to a 1 MiB raw disk image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    obj, binary, image = out_dir / "dirty.o", out_dir / "dirty.bin", out_dir / "dirty.img"
    run(
        [
            tool("as"),
            "--32",
            "--defsym",
            f"DIRTY_MIB={dirty_mib}",
            "-o",
            str(obj),
            str(DIRTY_SOURCE),
        ]
    )
    run(
        [
            tool("ld"),
            "-m",
            "elf_i386",
            "-Ttext",
            "0x7c00",
            "--oformat",
            "binary",
            "-o",
            str(binary),
            str(obj),
        ]
    )
    data = binary.read_bytes()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise LabError(f"dirty boot sector is {len(data)} bytes, expected 512 ending in 55aa")
    with image.open("wb") as f:
        f.write(data)
        f.truncate(1 << 20)
    return image


LOCAL_DISK_DIR = "images"
"""Local (non-shared) guest disks: <hostdir>/lib/images, seen as /var/lib/libvirt/images inside
the host (every host has its own: a migration must copy them, VIR_MIGRATE_NON_SHARED_DISK)."""


def local_disk_paths(hostdir: str, name: str) -> tuple[str, Path]:
    """(path inside the host, path from the root namespace) of a guest's local disk."""
    return (
        f"{LIBVIRT_PATHS['lib']}/{LOCAL_DISK_DIR}/{name}.raw",
        Path(hostdir) / "lib" / LOCAL_DISK_DIR / f"{name}.raw",
    )


def write_local_disk(path: Path, name: str, mib: int) -> str:
    """A raw image of `mib` MiB filled with a pattern derived from the guest's name; its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            chunk = hashlib.sha256(f"{name}:{i}".encode()).digest() * (MIB // 32)
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def guest_xml(
    name: str,
    memory_mib: int = 128,
    *,
    dirty_image: str | None = None,
    domain_type: str = "kvm",
    local_disk: str | None = None,
    network: str | None = None,
) -> str:
    """Domain XML of a lab guest: diskless SeaBIOS (idles at "no bootable device"), or booting the
    dirty boot sector from a read-only virtio disk (read-only disks are migration-safe on a path
    that every lab host sees). rebootTimeout -1: SeaBIOS never retries the boot (by default it
    reboots every 60 s after "no bootable device", and each reboot's POST burns CPU for
    seconds: an "idle" guest would not stay idle)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise LabError(f"bad guest name {name!r}")
    if dirty_image:
        boot = "<boot dev='hd'/>"
        disk = (
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{dirty_image}'/><target dev='vda' bus='virtio'/><readonly/></disk>"
        )
    else:
        boot = "<boot dev='hd'/>"
        disk = ""
    if local_disk:  # writable, on this host only: copied by a copy-storage migration
        disk += (
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{local_disk}'/><target dev='vdb' bus='virtio'/></disk>"
        )
    if network:
        disk += (
            f"<interface type='network'><source network='{network}'/>"
            "<model type='virtio'/></interface>"
        )
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}<bios rebootTimeout='-1'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{tool("qemu-system-x86_64")}</emulator>
    {disk}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


# --------------------------------------------------------------------------------------------
# host configuration


def libvirtd_conf(ip: str, host_uuid: str) -> str:
    return f"""# rebalancerd lab host
listen_tls = 0
listen_tcp = 1
listen_addr = "{ip}"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "{host_uuid}"
log_level = 3
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 2
keepalive_count = 3
"""


def qemu_conf(ip: str) -> str:
    return f"""# rebalancerd lab host
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
stdio_handler = "file"
namespaces = []
# incoming migrations listen on every link (eth0 and the dedicated mig0); without a
# migration URI the source is told the eth0 address
migration_address = "0.0.0.0"
migration_host = "{ip}"
remember_owner = 0
# peer-to-peer migration connections notice a dead or cut peer within about 4 s
keepalive_interval = 1
keepalive_count = 3
"""


INIT_SCRIPT = r"""
set -u
H="$1"; CACHE="$2"; HOSTNAME_="$3"
hostname "$HOSTNAME_"
for p in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt \
         log:/var/log/libvirt; do
  mount --bind "$H/${p%%:*}" "${p#*:}" || exit 10
done
mount --bind "$CACHE" /var/cache/libvirt/qemu/capabilities || exit 11
mount --bind "$H/hosts" /etc/hosts || exit 12
# cgroupfs remounted inside the cgroup namespace: libvirt sees only this host's subtree
mount -t tmpfs -o mode=755 lab-cgroup /sys/fs/cgroup || exit 13
while read -r fstype dir opts; do
  mkdir -p "/sys/fs/cgroup/$dir"
  if [ "$fstype" = cgroup2 ]; then mount -t cgroup2 cgroup2 "/sys/fs/cgroup/$dir" || exit 14
  else mount -t cgroup -o "$opts" cgroup "/sys/fs/cgroup/$dir" || exit 14; fi
done < "$H/cgroup-mounts"
# PID 1 is this shell: it reaps every orphan (QEMU daemonizes) and supervises libvirtd.
lv=0
trap 'kill -TERM $lv 2>/dev/null; exit 0' TERM
while :; do
  rm -f "$H/restart"
  libvirtd --listen --config /etc/libvirt/libvirtd.conf --pid-file "$H/libvirtd.pid" \
      >>"$H/libvirtd.out" 2>&1 &
  lv=$!
  echo "$lv" > "$H/libvirtd.nspid"
  wait "$lv"
  echo "libvirtd exited: $?" >>"$H/libvirtd.out"
  while [ ! -e "$H/restart" ]; do sleep 0.05 & wait $!; done
done
"""


# --------------------------------------------------------------------------------------------
# up / down / status


def _host_entry(state: dict[str, Any], name: str) -> dict[str, Any]:
    for h in state["hosts"]:
        if h["name"] == name:
            return h  # type: ignore[no-any-return]
    raise LabError(
        f"unknown lab host {name!r} (hosts: {', '.join(h['name'] for h in state['hosts'])})"
    )


def public_view(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "dir": state["dir"],
        "prefix": state["prefix"],
        "domain_type": state.get("domain_type", "kvm"),
        "dirty_image": state.get("dirty_image"),
        "hosts": [
            {
                "name": h["name"],
                "hostname": h["hostname"],
                "ip": h["ip"],
                "uri": h["uri"],
                "migration_uri": h["migration_uri"],
                "netns": h["netns"],
                "mig_ip": h.get("mig_ip"),
                "mig_uri": h.get("mig_uri"),
            }
            for h in state["hosts"]
        ],
    }


def up(
    lab_dir: Path, hosts: int, cache_dir: Path = DEFAULT_CACHE, dirty_mib: int = 64
) -> dict[str, Any]:
    if not 1 <= hosts <= 50:
        raise LabError("--hosts must be between 1 and 50")
    check_prerequisites()
    lab_dir = lab_dir.resolve()
    if (lab_dir / STATE_FILE).exists():
        raise LabError(f"a lab already exists at {lab_dir} (run `down --dir {lab_dir}` first)")
    if lab_dir.exists() and any(lab_dir.iterdir()):
        raise LabError(f"{lab_dir} exists and is not empty")
    ensure_qemu_user()
    prefix = "rbl" + secrets.token_hex(3)
    while (NETNS_DIR / f"{prefix}-br").exists():
        prefix = "rbl" + secrets.token_hex(3)
    lab_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "dir": str(lab_dir),
        "prefix": prefix,
        "bridge_netns": None,
        "mig_bridge_netns": None,
        "hosts": [],
        "domain_type": "kvm" if Path("/dev/kvm").exists() else "qemu",
        "created": time.time(),
    }
    save_state(state)
    try:
        _up(state, hosts, cache_dir, dirty_mib)
    except BaseException:
        try:
            down(lab_dir)
        except Exception as exc:  # pragma: no cover - best effort
            print(f"lab: cleanup after failed up also failed: {exc}", file=sys.stderr)
        raise
    return state


def _up(state: dict[str, Any], n_hosts: int, cache_dir: Path, dirty_mib: int) -> None:
    lab_dir = Path(state["dir"])
    prefix = state["prefix"]
    caps = cache_dir / "qemu-capabilities"
    caps.mkdir(parents=True, exist_ok=True)
    for path in LIBVIRT_PATHS.values():  # bind-mount targets (empty directories if absent)
        Path(path).mkdir(parents=True, exist_ok=True)
    state["dirty_image"] = str(build_dirty_image(lab_dir / "guests", dirty_mib))
    mounts = cgroup_mounts()

    # network: a bridge in its own namespace, one namespace + veth per host
    br = f"{prefix}-br"
    state["bridge_netns"] = br
    save_state(state)
    ip = tool("ip")
    run([ip, "netns", "add", br])
    run([ip, "-n", br, "link", "set", "lo", "up"])
    run([ip, "-n", br, "link", "add", "br0", "type", "bridge"])
    run([ip, "-n", br, "link", "set", "br0", "up"])
    mbr = f"{prefix}-mbr"  # the dedicated migration link: its own bridge namespace
    state["mig_bridge_netns"] = mbr
    save_state(state)
    run([ip, "netns", "add", mbr])
    run([ip, "-n", mbr, "link", "set", "lo", "up"])
    run([ip, "-n", mbr, "link", "add", "br1", "type", "bridge"])
    run([ip, "-n", mbr, "link", "set", "br1", "up"])
    names = [f"h{i + 1}" for i in range(n_hosts)]
    ips = {n: f"{SUBNET}.{FIRST_HOST_OCTET + i}" for i, n in enumerate(names)}
    mig_ips = {n: f"{MIGRATION_SUBNET}.{FIRST_HOST_OCTET + i}" for i, n in enumerate(names)}
    hostnames = {n: f"{prefix}-{n}" for n in names}
    hosts_file = "127.0.0.1 localhost\n" + "".join(f"{ips[n]} {hostnames[n]}\n" for n in names)
    for name in names:
        hdir = lab_dir / name
        entry: dict[str, Any] = {
            "name": name,
            "hostname": hostnames[name],
            "ip": ips[name],
            "netns": f"{prefix}-{name}",
            "cgroup": f"{prefix}-{name}",
            "hostdir": str(hdir),
            "uri": f"qemu+unix:///system?socket={hdir}/run/libvirt-sock",
            "migration_uri": f"qemu+tcp://{ips[name]}/system",
            "mig_ip": mig_ips[name],
            "mig_uri": f"tcp://{mig_ips[name]}",
            "unshare_pid": None,
        }
        state["hosts"].append(entry)
        save_state(state)
        run([ip, "netns", "add", entry["netns"]])
        run(
            [
                ip,
                "-n",
                br,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                entry["netns"],
            ]
        )
        run([ip, "-n", br, "link", "set", name, "master", "br0", "up"])
        run([ip, "-n", entry["netns"], "link", "set", "lo", "up"])
        run([ip, "-n", entry["netns"], "addr", "add", f"{ips[name]}/24", "dev", "eth0"])
        run([ip, "-n", entry["netns"], "link", "set", "eth0", "up"])
        veth = ["type", "veth", "peer", "name", "mig0", "netns", entry["netns"]]
        run([ip, "-n", mbr, "link", "add", name, *veth])
        run([ip, "-n", mbr, "link", "set", name, "master", "br1", "up"])
        run([ip, "-n", entry["netns"], "addr", "add", f"{mig_ips[name]}/24", "dev", "mig0"])
        run([ip, "-n", entry["netns"], "link", "set", "mig0", "up"])
        # private state
        for sub in LIBVIRT_PATHS:
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        (hdir / "cache" / "qemu" / "capabilities").mkdir(parents=True, exist_ok=True)
        (hdir / "etc" / "libvirtd.conf").write_text(libvirtd_conf(ips[name], str(uuid.uuid4())))
        (hdir / "etc" / "qemu.conf").write_text(qemu_conf(ips[name]))
        (hdir / "hosts").write_text(hosts_file)
        (hdir / "cgroup-mounts").write_text(
            "".join(
                f"{t} {m.relative_to(CGROUP_FS) if m != CGROUP_FS else '.'} {o}\n"
                for m, t, o in mounts
                if m != CGROUP_FS
            )
        )
        # own cgroup in every hierarchy
        procs_files = []
        for mnt, _fstype, opts in mounts:
            cg = mnt / entry["cgroup"]
            cg.mkdir(exist_ok=True)
            if "cpuset" in opts.split(","):
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (cg / f).write_text((mnt / f).read_text())
            procs_files.append(str(cg / "cgroup.procs"))
        launcher = 'for f in $CGPROCS; do echo $$ > "$f" || exit 20; done; exec "$@"'
        cmd = [
            "bash",
            "-c",
            launcher,
            "lab-launch",
            tool("unshare"),
            "--mount",
            "--uts",
            "--cgroup",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
            "--propagation",
            "private",
            tool("nsenter"),
            f"--net={NETNS_DIR / entry['netns']}",
            "bash",
            "-c",
            INIT_SCRIPT,
            "lab-init",
            str(hdir),
            str(caps),
            hostnames[name],
        ]
        with (hdir / "init.out").open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "CGPROCS": " ".join(procs_files), "PATH": _path()},
            )
        entry["unshare_pid"] = proc.pid
        save_state(state)
    wait_ready(state)
    if os.environ.get("REBALANCERD_LAB_INJECT_FAILURE") == "after-ready":  # tests the cleanup
        raise LabError("injected failure after the hosts came up")


def _path() -> str:
    base = os.environ.get("PATH", "")
    extra = [p for p in ("/usr/local/sbin", "/usr/sbin", "/sbin") if p not in base.split(":")]
    return ":".join([base, *extra]) if base else ":".join(["/usr/bin", "/bin", *extra])


def wait_ready(state: dict[str, Any], timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until every daemon answers over its unix socket (its QEMU driver initialised)."""
    deadline = time.monotonic() + timeout
    pending = {h["name"]: h for h in state["hosts"]}
    while pending:
        for name, h in list(pending.items()):
            if h["unshare_pid"] and not pid_alive(h["unshare_pid"]):
                raise LabError(
                    f"host {name}: namespace init exited ({_tail(Path(h['hostdir']) / 'init.out')})"
                )
            sock = Path(h["hostdir"]) / "run" / "libvirt-sock"
            if not sock.exists():
                continue
            proc = subprocess.run(
                [tool("virsh"), "-c", h["uri"], "-q", "capabilities"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if proc.returncode == 0 and "<host>" in proc.stdout:
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            details = "; ".join(
                f"{n}: {_tail(Path(h['hostdir'], 'libvirtd.out')) or _tail(Path(h['hostdir'], 'init.out'))}"  # noqa: E501
                for n, h in pending.items()
            )
            raise LabError(f"libvirtd not ready after {timeout:.0f}s: {details}")
        time.sleep(0.05)


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _host_pids(h: dict[str, Any]) -> set[int]:
    pids: set[int] = set()
    for cg in cgroup_dirs(h["cgroup"]):
        pids |= cgroup_procs(cg)
    return pids


def down(lab_dir: Path, timeout: float = 20.0) -> list[str]:
    """Kill everything the lab started, remove its cgroups, namespaces and directory.
    Returns a list of problems (empty when clean)."""
    lab_dir = lab_dir.resolve()
    state = load_state(lab_dir)
    problems: list[str] = []
    hosts = state.get("hosts", [])
    # 1. SIGKILL each namespace's init: the kernel then kills the whole PID namespace.
    for h in hosts:
        for pid in _init_pids(h):
            _kill(pid, signal.SIGKILL)
        if h.get("unshare_pid") and _is_ours(h["unshare_pid"], h):
            _kill(h["unshare_pid"], signal.SIGKILL)
    # 2. anything still in the lab's cgroups (only the lab's processes are there)
    deadline = time.monotonic() + timeout
    while True:
        left = set()
        for h in hosts:
            left |= _host_pids(h)
        left = {p for p in left if pid_alive(p)}
        if not left:
            break
        if time.monotonic() > deadline:
            problems.append(f"processes still alive: {sorted(left)}")
            break
        for pid in left:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    # 3. cgroups (depth first: libvirt creates machine/... below ours)
    for h in hosts:
        for cg in cgroup_dirs(h["cgroup"]):
            for _ in range(50):
                remove_cgroup_tree(cg)
                if not cg.exists():
                    break
                time.sleep(0.02)
            if cg.exists():
                problems.append(f"cgroup {cg} not removed")
    # 4. network namespaces
    ip = tool("ip")
    bridges = [state.get("bridge_netns"), state.get("mig_bridge_netns")]
    for ns in [h["netns"] for h in hosts] + [b for b in bridges if b]:
        if (NETNS_DIR / ns).exists():
            proc = run([ip, "netns", "del", ns], check=False)
            if proc.returncode != 0:
                problems.append(f"netns {ns}: {proc.stderr.strip()}")
    # 5. the lab directory
    if not problems:
        shutil.rmtree(lab_dir, ignore_errors=True)
    return problems


def _init_pids(h: dict[str, Any]) -> list[int]:
    """Host PIDs of the namespace init (child of unshare)."""
    up_pid = h.get("unshare_pid")
    if not up_pid or not _is_ours(up_pid, h):
        return []
    return children(up_pid)


def _is_ours(pid: int, h: dict[str, Any]) -> bool:
    """A recorded PID is only trusted if it still sits in the host's cgroup (PIDs get reused)."""
    return any(pid in cgroup_procs(cg) for cg in cgroup_dirs(h["cgroup"]))


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def libvirtd_pid(state: dict[str, Any], host: str) -> int | None:
    """Host PID of a lab host's libvirtd (None if not running)."""
    h = _host_entry(state, host)
    for init in _init_pids(h):
        for child in children(init):
            if comm(child) == "libvirtd" and pid_alive(child):
                return child
    return None


def kill_libvirtd(lab_dir: Path, host: str, sig: int = signal.SIGKILL) -> int:
    state = load_state(lab_dir)
    pid = libvirtd_pid(state, host)
    if pid is None:
        raise LabError(f"libvirtd of {host} is not running")
    os.kill(pid, sig)
    for _ in range(200):
        if not pid_alive(pid):
            break
        time.sleep(0.01)
    return pid


def restart_libvirtd(lab_dir: Path, host: str, timeout: float = READY_TIMEOUT_S) -> None:
    state = load_state(lab_dir)
    h = _host_entry(state, host)
    if libvirtd_pid(state, host) is not None:
        raise LabError(f"libvirtd of {host} is still running")
    Path(h["hostdir"], "restart").touch()
    wait_ready({**state, "hosts": [h]}, timeout)


def set_link(lab_dir: Path, host: str, up_: bool) -> None:
    state = load_state(lab_dir)
    h = _host_entry(state, host)
    run([tool("ip"), "-n", h["netns"], "link", "set", "eth0", "up" if up_ else "down"])


def link_bytes(lab_dir: Path, host: str, ifname: str) -> dict[str, int]:
    """{"rx": bytes, "tx": bytes} of one interface in a host's network namespace."""
    state = load_state(lab_dir)
    h = _host_entry(state, host)
    if ifname not in ("eth0", "mig0"):
        raise LabError(f"unknown lab interface {ifname!r} (eth0 or mig0)")
    out = {}
    for k in ("rx", "tx"):
        counter = f"/sys/class/net/{ifname}/statistics/{k}_bytes"
        proc = run([tool("ip"), "netns", "exec", h["netns"], "cat", counter])
        out[k] = int(proc.stdout.strip())
    return out


def disk_checksum(lab_dir: Path, host: str, name: str) -> str | None:
    """sha256 of a guest's local disk in a host's private directory (None: no such file)."""
    h = _host_entry(load_state(lab_dir), host)
    _, on_host = local_disk_paths(h["hostdir"], name)
    return file_sha256(on_host) if on_host.exists() else None


def precreate_disk(lab_dir: Path, host: str, name: str, mib: int) -> None:
    """An empty (sparse) image of the same size on a target host: libvirt 9 creates a missing
    target disk only for a volume of a storage pool; for a plain file it must exist."""
    h = _host_entry(load_state(lab_dir), host)
    _, on_host = local_disk_paths(h["hostdir"], name)
    on_host.parent.mkdir(parents=True, exist_ok=True)
    with on_host.open("wb") as f:
        f.truncate(mib * MIB)


def define_network(lab_dir: Path, host: str, name: str) -> str:
    """An isolated libvirt network (a bridge, no forwarding, no DHCP) on one host only."""
    h = _host_entry(load_state(lab_dir), host)
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 15:
        raise LabError(f"bad network name {name!r} (letters, digits, - _; at most 15)")
    idx = 1 + sum(1 for p in (Path(h["hostdir"]) / "etc").glob("rbl-net-*.xml"))
    path = Path(h["hostdir"]) / "etc" / f"rbl-net-{name}.xml"
    path.write_text(f"<network><name>{name}</name><bridge name='rbln{idx}' stp='off'/></network>\n")
    virsh = tool("virsh")
    run([virsh, "-c", h["uri"], "net-define", str(path)])
    run([virsh, "-c", h["uri"], "net-start", name])
    return name


def status(lab_dir: Path) -> dict[str, Any]:
    state = load_state(lab_dir)
    view = public_view(state)
    for h, v in zip(state["hosts"], view["hosts"], strict=True):
        inits = _init_pids(h)
        v["init_alive"] = bool(inits)
        v["libvirtd_pid"] = libvirtd_pid(state, h["name"]) if inits else None
        v["processes"] = len(_host_pids(h))
        link = run([tool("ip"), "-n", h["netns"], "-o", "link", "show", "eth0"], check=False)
        v["link_up"] = "state UP" in link.stdout or ",UP" in link.stdout.split(">")[0]
    return view


def leftovers(prefix: str | None = None) -> dict[str, list[str]]:
    """Network namespaces and cgroups of any lab (or of one prefix) that still exist."""
    want = prefix or "rbl"
    netns = sorted(p.name for p in NETNS_DIR.glob(f"{want}*")) if NETNS_DIR.is_dir() else []
    cgroups = sorted({str(p) for mnt, _t, _o in cgroup_mounts() for p in mnt.glob(f"{want}*-h*")})
    return {"netns": netns, "cgroups": cgroups}


def define_guest(
    lab_dir: Path,
    host: str,
    name: str,
    memory_mib: int,
    dirty: bool,
    start: bool,
    local_disk_mib: int = 0,
    network: str | None = None,
) -> str:
    state = load_state(lab_dir)
    h = _host_entry(state, host)
    if not 16 <= memory_mib <= 4096:
        raise LabError("--memory must be between 16 and 4096 MiB")
    if not 0 <= local_disk_mib <= 4096:
        raise LabError("--local-disk must be between 0 and 4096 MiB")
    local = None
    if local_disk_mib:
        local, on_host = local_disk_paths(h["hostdir"], name)
        write_local_disk(on_host, name, local_disk_mib)
    xml = guest_xml(
        name,
        memory_mib,
        dirty_image=state["dirty_image"] if dirty else None,
        domain_type=state["domain_type"],
        local_disk=local,
        network=network,
    )
    path = Path(state["dir"]) / "guests" / f"{name}.xml"
    path.write_text(xml)
    run([tool("virsh"), "-c", h["uri"], "define", str(path)])
    if start:
        run([tool("virsh"), "-c", h["uri"], "start", name])
    return str(path)


# --------------------------------------------------------------------------------------------
# CLI


def _iter_hosts(view: dict[str, Any]) -> Iterator[str]:
    for h in view["hosts"]:
        line = f"{h['name']:4} {h['ip']:15} {h['uri']}  (peers: {h['migration_uri']}"
        line += f", migration link: {h['mig_uri']})" if h.get("mig_uri") else ")"
        if "init_alive" in h:
            line += (
                f"  init={'up' if h['init_alive'] else 'DOWN'}"
                f" libvirtd={h['libvirtd_pid'] or 'DOWN'} link={'up' if h['link_up'] else 'DOWN'}"
            )
        yield line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="bring a lab up")
    p_up.add_argument("--hosts", type=int, default=2)
    p_up.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="shared QEMU capability cache"
    )
    p_up.add_argument(
        "--dirty-mib", type=int, default=64, help="RAM the dirty guest rewrites per pass"
    )
    for name in ("down", "status", "leftovers"):
        sub.add_parser(name)
    p_def = sub.add_parser("define-guest", help="define (and start) a guest on a lab host")
    p_def.add_argument("--host", required=True)
    p_def.add_argument("--name", required=True)
    p_def.add_argument("--memory", type=int, default=128)
    p_def.add_argument("--dirty", action="store_true", help="boot the RAM-dirtying boot sector")
    p_def.add_argument("--no-start", action="store_true")
    p_def.add_argument(
        "--local-disk", type=int, default=0, metavar="MIB", help="a local disk with a pattern"
    )
    p_def.add_argument("--network", help="a NIC on this libvirt network (see define-network)")
    p_net = sub.add_parser("define-network", help="an isolated libvirt network on one host")
    p_net.add_argument("--host", required=True)
    p_net.add_argument("--name", required=True)
    p_kill = sub.add_parser("kill-libvirtd", help="SIGKILL a host's libvirtd (fault injection)")
    p_kill.add_argument("--host", required=True)
    p_rst = sub.add_parser("restart-libvirtd", help="start a killed libvirtd again")
    p_rst.add_argument("--host", required=True)
    p_link = sub.add_parser("link", help="cut or restore a host's network link")
    p_link.add_argument("--host", required=True)
    p_link.add_argument("state", choices=["up", "down"])
    for p in sub.choices.values():
        p.add_argument("--dir", type=Path, default=Path("/tmp/rbl"), help="lab directory")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    out: Any
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            state = up(args.dir, args.hosts, args.cache, args.dirty_mib)
            out = public_view(state)
            out["up_s"] = round(time.monotonic() - t0, 3)
        elif args.cmd == "down":
            problems = down(args.dir)
            out = {"ok": not problems, "problems": problems}
            if problems:
                _emit(args.json, out)
                return 1
        elif args.cmd == "status":
            out = status(args.dir)
        elif args.cmd == "leftovers":
            out = leftovers()
        elif args.cmd == "define-guest":
            out = {
                "xml": define_guest(
                    args.dir,
                    args.host,
                    args.name,
                    args.memory,
                    args.dirty,
                    not args.no_start,
                    args.local_disk,
                    args.network,
                )
            }
        elif args.cmd == "define-network":
            out = {"network": define_network(args.dir, args.host, args.name)}
        elif args.cmd == "kill-libvirtd":
            out = {"killed": kill_libvirtd(args.dir, args.host)}
        elif args.cmd == "restart-libvirtd":
            restart_libvirtd(args.dir, args.host)
            out = {"restarted": args.host}
        else:  # link
            set_link(args.dir, args.host, args.state == "up")
            out = {"host": args.host, "link": args.state}
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if args.json:
            print(json.dumps({"error": msg}))
        else:
            print(f"lab: error: {msg}", file=sys.stderr)
        return 2
    _emit(args.json, out)
    return 0


def _emit(as_json: bool, out: Any) -> None:
    if as_json:
        print(json.dumps(out))
    elif isinstance(out, dict) and "hosts" in out and isinstance(out["hosts"], list):
        print(f"lab {out['prefix']} at {out['dir']}")
        for line in _iter_hosts(out):
            print("  " + line)
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
