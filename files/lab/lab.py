#!/usr/bin/env python3
"""Throwaway Debian 12 or 13 hosts with systemd as PID 1, booted with systemd-nspawn.

The project's molecule scenarios and its local lab run on these hosts. Each host is an
overlayfs over one cached debootstrap tree, on a private bridge with NAT, reached by
Ansible over plain ssh exactly as a VM would be.

  lab.py up NAME=IP[@RELEASE] ... [--fresh]   boot hosts (reuse running ones unless --fresh);
                                              RELEASE is bookworm (Debian 12) or trixie (13),
                                              default $DAGSTER_LAB_RELEASE or trixie
  lab.py down [NAME ...]                      stop hosts (all when none named); the bridge,
                                              nft table and ip_forward go with the last host
  lab.py reboot NAME ... [--power-cut]        reboot running hosts, keeping their disks: a clean
                                              halt, or with --power-cut a kill of the whole host
  lab.py status                               list hosts
  lab.py shell NAME -- CMD...                 run a command inside a host (nsenter)

Everything lives under /var/lib/dagster-lab (hosts, ssh key, generated secrets) and one
rootfs per release under $DAGSTER_LAB_CACHE (default /var/cache/dagster-lab), built once. Runs that were killed
half-way are tolerated: `up` and `down` clean whatever a previous run left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# The lab inventory names files under STATE (ssh key, generated secrets).
STATE = Path("/var/lib/dagster-lab")
CACHE = Path(os.environ.get("DAGSTER_LAB_CACHE", "/var/cache/dagster-lab"))
BRIDGE = os.environ.get("DAGSTER_LAB_BRIDGE", "dglab0")
NETWORK = ipaddress.ip_network(os.environ.get("DAGSTER_LAB_NETWORK", "10.77.0.0/24"))
NFT_TABLE = "dagster_lab"
RELEASES = ("bookworm", "trixie")  # Debian 12, Debian 13
DEFAULT_RELEASE = os.environ.get("DAGSTER_LAB_RELEASE", "trixie")
PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,sudo,iproute2,"
    "ca-certificates,locales,udev,kmod,procps,less,curl,gnupg,libnss-myhostname,rsync"
)
BOOT_TIMEOUT = 60

HOSTS = STATE / "hosts"
KEY = STATE / "ssh" / "id_ed25519"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_SAVED = STATE / "ip_forward.orig"


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, **kw)


def quiet(*cmd: str) -> bool:
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def gateway() -> str:
    return str(next(NETWORK.hosts()))


# --- the cached root filesystem ------------------------------------------------------

def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*")
    ):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if line.startswith("URIs:") and "security" not in line:
                return words[1]
            if line.startswith("deb ") and "debian" in line and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def rootfs(release: str) -> Path:
    return CACHE / release


def ensure_rootfs(release: str) -> None:
    root, done = rootfs(release), CACHE / f"{release}.ok"
    if (root / "etc" / "os-release").exists() and done.exists():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{release}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    mirror = apt_mirror()
    log(f"building the {release} root filesystem from {mirror} (once per release, ~2 min)")
    started = time.monotonic()
    run("debootstrap", "--variant=minbase", f"--include={PACKAGES}", release, str(tmp), mirror,
        stdout=subprocess.DEVNULL)
    configure_rootfs(tmp)
    tmp.rename(root)
    done.write_text(f"{mirror}\n")
    log(f"{release} root filesystem ready in {time.monotonic() - started:.0f}s")


def configure_rootfs(tmp: Path) -> None:
    (tmp / "etc" / "machine-id").write_text("")
    (tmp / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    run("chroot", str(tmp), "systemctl", "enable", "systemd-networkd", "ssh",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Units that only make noise in a container.
    run("chroot", str(tmp), "systemctl", "mask", "systemd-timesyncd", "getty@tty1",
        "console-getty", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sshd = tmp / "etc" / "ssh" / "sshd_config.d" / "lab.conf"
    sshd.write_text("PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # Host keys are made per host at first boot, not baked into the shared image.
    for key in (tmp / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    dropin = tmp / "etc" / "systemd" / "system" / "ssh.service.d" / "hostkeys.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n"
    )


# --- network ---------------------------------------------------------------------------

def default_interface() -> str:
    out = run("ip", "-o", "route", "show", "default", capture_output=True).stdout.split()
    return out[out.index("dev") + 1]


def ensure_network() -> None:
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not quiet("ip", "link", "show", BRIDGE):
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "replace", f"{gateway()}/{NETWORK.prefixlen}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    if not IP_FORWARD_SAVED.exists():
        IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text())
    IP_FORWARD.write_text("1\n")
    out = default_interface()
    ruleset = f"""
table ip {NFT_TABLE}
delete table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {NETWORK} oifname "{out}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{BRIDGE}" oifname "{out}" accept
    iifname "{out}" oifname "{BRIDGE}" ct state established,related accept
    iifname "{BRIDGE}" oifname "{BRIDGE}" accept
  }}
}}
"""
    run("nft", "-f", "-", input=ruleset)


def remove_network() -> None:
    quiet("nft", "delete", "table", "ip", NFT_TABLE)
    quiet("ip", "link", "delete", BRIDGE)
    if IP_FORWARD_SAVED.exists():
        IP_FORWARD.write_text(IP_FORWARD_SAVED.read_text())
        IP_FORWARD_SAVED.unlink()


# --- hosts -----------------------------------------------------------------------------

def ensure_key() -> None:
    if KEY.exists():
        return
    KEY.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dagster-lab", "-f", str(KEY))


def host_dir(name: str) -> Path:
    return HOSTS / name


def host_file(name: str, key: str) -> str:
    try:
        return (host_dir(name) / key).read_text()
    except OSError:
        return ""


def nspawn_pid(name: str) -> int | None:
    pidfile = host_dir(name) / "nspawn.pid"
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"--machine={name}".encode() in cmdline else None


def init_pid(name: str) -> int | None:
    """PID (in this namespace) of the host's systemd: the child of systemd-nspawn."""
    pid = nspawn_pid(name)
    if pid is None:
        return None
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = children.read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def pid_namespace_members(namespace: str) -> list[int]:
    members = []
    for entry in Path("/proc").glob("[0-9]*/ns/pid"):
        try:
            if os.readlink(entry) == namespace:
                members.append(int(entry.parent.parent.name))
        except OSError:
            continue  # gone meanwhile
    return members


def halt_host(name: str, power_cut: bool = False) -> None:
    """Stop the host's processes; its disk (the overlay) stays. Returns once no process
    of the host is left: a host booted on the same disk must never meet its old self."""
    pid = nspawn_pid(name)
    if pid is None:
        return
    init = init_pid(name)
    try:
        namespace = os.readlink(f"/proc/{init}/ns/pid") if init else None
    except OSError:
        namespace = None
    if power_cut and init:
        # The power is cut: the host's PID 1 dies, and the kernel kills every other
        # process of its PID namespace with it. Killing nspawn alone would not: the
        # host's processes would live on, orphaned.
        os.kill(init, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGTERM)  # nspawn asks the host's systemd for a clean halt
    deadline = time.monotonic() + 30
    while nspawn_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if nspawn_pid(name) is not None or (namespace and pid_namespace_members(namespace)):
        if init and Path(f"/proc/{init}").exists():
            os.kill(init, signal.SIGKILL)
        if nspawn_pid(name) is not None:
            os.kill(pid, signal.SIGKILL)
    while namespace and pid_namespace_members(namespace):
        if time.monotonic() > deadline + 30:
            raise RuntimeError(f"{name}: processes {pid_namespace_members(namespace)} outlived the host")
        time.sleep(0.1)
    quiet("ip", "link", "delete", f"vb-{name}"[:15])


def kill_rooted_in(root: Path) -> None:
    """SIGKILL every process whose root is this host's tree: what a killed run or an
    older lab.py (which cut the power by killing nspawn alone) left running."""
    for entry in Path("/proc").glob("[0-9]*/root"):
        try:
            if os.readlink(entry) == str(root):
                os.kill(int(entry.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def stop_host(name: str) -> None:
    d = host_dir(name)
    halt_host(name)
    root = d / "root"
    kill_rooted_in(root)
    if os.path.ismount(root):
        run("umount", "--lazy", str(root))
    quiet("ip", "link", "delete", f"vb-{name}"[:15])
    clear_nspawn_leftovers(name)
    shutil.rmtree(d, ignore_errors=True)


def write_host_config(root: Path, name: str, ip: str) -> None:
    (root / "etc" / "hostname").write_text(f"{name}\n")
    (root / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n{ip} {name}\n")
    net = root / "etc" / "systemd" / "network" / "10-host0.network"
    net.parent.mkdir(parents=True, exist_ok=True)
    net.write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={ip}/{NETWORK.prefixlen}\nGateway={gateway()}\nLinkLocalAddressing=no\n"
    )
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(f"{KEY}.pub").read_text())
    os.chmod(ssh / "authorized_keys", 0o600)


def clear_nspawn_leftovers(name: str) -> None:
    """systemd-nspawn 257 (Debian 13) makes /run/systemd/nspawn/unix-export/NAME and removes
    it when it exits; a killed nspawn (a power cut) leaves it, and the next start of the
    same machine refuses ("Mount point ... exists already")."""
    export = Path("/run/systemd/nspawn/unix-export") / name
    if os.path.ismount(export):
        quiet("umount", "--lazy", str(export))
    if export.is_dir():
        shutil.rmtree(export, ignore_errors=True)


def start_host(name: str, ip: str, release: str) -> subprocess.Popen:
    d = host_dir(name)
    clear_nspawn_leftovers(name)
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(d / "root"):  # a reboot keeps the mounted disk
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={rootfs(release)},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "root"))
    write_host_config(d / "root", name, ip)
    (d / "ip").write_text(ip)
    (d / "release").write_text(release)
    console = open(d / "console.log", "w")
    proc = subprocess.Popen(
        ["systemd-nspawn", "--boot", f"--directory={d / 'root'}", f"--machine={name}",
         "--register=no", "--keep-unit", f"--network-bridge={BRIDGE}",
         "--resolv-conf=copy-host", "--timezone=off", "--console=read-only"],
        stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (d / "nspawn.pid").write_text(str(proc.pid))
    return proc


def wait_ssh(name: str, ip: str, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"lab: {name} exited while booting; see {host_dir(name)}/console.log")
        try:
            with socket.create_connection((ip, 22), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"lab: {name} ({ip}) did not answer ssh in {BOOT_TIMEOUT}s; "
                     f"see {host_dir(name)}/console.log")


def running_hosts() -> list[str]:
    if not HOSTS.is_dir():
        return []
    return sorted(p.name for p in HOSTS.iterdir() if nspawn_pid(p.name) is not None)


def sweep_dead_hosts() -> None:
    """Remove hosts whose nspawn is gone (a killed run or a session that ended)."""
    if HOSTS.is_dir():
        for path in HOSTS.iterdir():
            if nspawn_pid(path.name) is None:
                stop_host(path.name)
                log(f"{path.name}: removed what a stopped run left behind")


@contextlib.contextmanager
def locked():
    """One `up` or `down` at a time: scenarios may run side by side, and one's last
    `down` must not remove the bridge while another's hosts are starting."""
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cmd_up(args) -> None:
    wanted = []
    for spec in args.hosts:
        name, _, address = spec.partition("=")
        ip, _, release = address.partition("@")
        release = release or DEFAULT_RELEASE
        if release not in RELEASES:
            raise SystemExit(f"lab: release {release!r} is unknown: use one of {', '.join(RELEASES)}")
        if ipaddress.ip_address(ip) not in NETWORK or ip == gateway():
            raise SystemExit(f"lab: {ip} is not a host address of {NETWORK}")
        wanted.append((name, ip, release))
    sweep_dead_hosts()
    for release in sorted({release for _, _, release in wanted}):
        ensure_rootfs(release)
    ensure_key()
    ensure_network()
    started = time.monotonic()
    booting = {}
    for name, ip, release in wanted:
        if nspawn_pid(name) is not None and not args.fresh:
            if host_file(name, "ip") == ip and host_file(name, "release") == release:
                log(f"{name} already running at {ip} ({release})")
                booting[name] = None
                continue
        stop_host(name)  # clears a stale or killed host of that name
        booting[name] = start_host(name, ip, release)
    for name, ip, _ in wanted:
        wait_ssh(name, ip, booting[name])
    log(f"{len(wanted)} host(s) answering ssh after {time.monotonic() - started:.1f}s")


def cmd_down(args) -> None:
    names = args.hosts or (sorted(p.name for p in HOSTS.iterdir()) if HOSTS.is_dir() else [])
    for name in names:
        stop_host(name)
        log(f"{name} removed")
    sweep_dead_hosts()
    if not running_hosts():
        remove_network()
        log(f"bridge {BRIDGE} and nft table {NFT_TABLE} removed, ip_forward restored")


def cmd_reboot(args) -> None:
    for name in args.hosts:
        if nspawn_pid(name) is None:
            raise SystemExit(f"lab: {name} is not running")
    started = time.monotonic()
    hosts = [(name, host_file(name, "ip"), host_file(name, "release") or DEFAULT_RELEASE) for name in args.hosts]
    for name, _, _ in hosts:
        halt_host(name, power_cut=args.power_cut)
    booting = {name: start_host(name, ip, release) for name, ip, release in hosts}
    for name, ip, _ in hosts:
        wait_ssh(name, ip, booting[name])
    log(f"{len(hosts)} host(s) rebooted and answering ssh after {time.monotonic() - started:.1f}s")


def cmd_status(_args) -> None:
    for name in running_hosts():
        print(f"{name}\t{host_file(name, 'ip')}\t{host_file(name, 'release') or 'bookworm'}\tinit pid {init_pid(name)}")


def cmd_shell(args) -> None:
    pid = init_pid(args.name)
    if pid is None:
        raise SystemExit(f"lab: {args.name} is not running")
    os.execvp("nsenter", ["nsenter", "-t", str(pid), "-a", *args.command])


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("lab: run as root (it mounts overlays and makes a bridge)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("hosts", nargs="+", metavar="NAME=IP")
    up.add_argument("--fresh", action="store_true", help="replace running hosts of those names")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down")
    down.add_argument("hosts", nargs="*", metavar="NAME")
    down.set_defaults(func=cmd_down)
    reboot = sub.add_parser("reboot")
    reboot.add_argument("hosts", nargs="+", metavar="NAME")
    reboot.add_argument("--power-cut", action="store_true", help="kill the host instead of a clean halt")
    reboot.set_defaults(func=cmd_reboot)
    sub.add_parser("status").set_defaults(func=cmd_status)
    shell = sub.add_parser("shell")
    shell.add_argument("name")
    shell.add_argument("command", nargs="+")
    shell.set_defaults(func=cmd_shell)
    args = parser.parse_args()
    if args.cmd in ("up", "down", "reboot"):
        with locked():
            args.func(args)
    else:
        args.func(args)


if __name__ == "__main__":
    main()
