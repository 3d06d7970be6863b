"""Makes the control plane's services run the workspace.yaml on disk and the code
servers running now: `workspace_sync.py [--check] --workspace FILE --timeout SECONDS
[--refresh LOCATION]... FIRST_UNIT [UNIT...]`.

Each service (control_plane.py) writes the SHA-1 of the workspace it has read to the
file its unit names in DAGSTER_WORKSPACE_LOADED_FILE, at start and after each reload. A
service whose digest differs from the file's is reloaded (SIGHUP through `systemctl
reload`) and waited for until it has read the file: FIRST_UNIT (the daemon) first, then
the others side by side, when the file names a location the daemon has not read yet (a
run launched for it before the daemon, which dequeues it, knows it fails for good);
otherwise all side by side. A missing file means the service is starting (its runtime
directory goes with each stop): it is waited for, not signalled, since it reads the file
as it starts. Because the digests are compared on every run, a deploy interrupted after
writing the file is finished by the next one.

--refresh names locations whose code server restarted: every service not reloaded here
reads them again from their new server (SIGUSR1 with a request file beside the digest;
control_plane.py answers in refresh.done), all side by side. A service whose process
does not catch SIGUSR1 (a launcher from before) is left to its watch of the server.

Prints {"reloaded": [...], "refreshed": [...], "seconds": {...}} on stdout; exits 1
with the reason when a service did not answer in time. Standard library only: runs on
the host's python3.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def read_service_file(path: Path, limit: int = -1) -> str | None:
    """A file the service writes; a link there is not followed (root reads it)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none yet, or a link: no answer
        return None
    with os.fdopen(handle) as answer:
        return answer.read(limit)


def loaded(path: Path) -> str | None:
    """The first line of a file the service writes."""
    return (read_service_file(path, 200) or "").strip() or None


def unit_state(unit: str) -> tuple[Path, int]:
    """The unit's DAGSTER_WORKSPACE_LOADED_FILE and its main process (0: none)."""
    shown = subprocess.run(["systemctl", "show", "-p", "MainPID", "-p", "Environment", unit],
                           capture_output=True, text=True, check=True).stdout
    properties = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    for variable in properties.get("Environment", "").split():
        name, _, value = variable.partition("=")
        if name == "DAGSTER_WORKSPACE_LOADED_FILE":
            return Path(value), int(properties.get("MainPID") or 0)
    raise SystemExit(f"{unit} sets no DAGSTER_WORKSPACE_LOADED_FILE: is its unit this role's?")


def wait_for(path: Path, wanted: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if loaded(path) == wanted:
            return True
        time.sleep(0.05)
    return loaded(path) == wanted


def location_names(path: Path) -> set[str] | None:
    """The locations a workspace.yaml of this role names (one `location_name:` line each)."""
    text = read_service_file(path)
    return None if text is None else set(re.findall(r"^\s*location_name:\s*\"?([^\s\"]+)", text, re.MULTILINE))


def catches_sigusr1(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) & (1 << (signal.SIGUSR1 - 1)))


def write_atomically(path: Path, text: str) -> None:
    """Root writing in a folder the service's account owns: a new file of a random name
    (never through a link planted there), then renamed over the old one."""
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o644)
        os.write(handle, text.encode())
    finally:
        os.close(handle)
    os.replace(partial, path)


class Sync:
    def __init__(self, args):
        self.args = args
        self.wanted = hashlib.sha1(args.workspace.read_bytes()).hexdigest()
        self.deadline = 0.0  # each phase has --timeout
        self.started = time.monotonic()
        self.reloaded, self.refreshed, self.seconds = [], [], {}

    def fail(self, message: str) -> None:
        print(message, file=sys.stderr)
        raise SystemExit(1)

    def reload(self, units: list[str]) -> None:
        """Has the units whose digest differs read the file, side by side."""
        self.deadline = time.monotonic() + self.args.timeout
        waiting = []
        for unit in units:
            path, _ = unit_state(unit)
            while loaded(path) is None and time.monotonic() < self.deadline and not self.args.check:
                time.sleep(0.2)  # starting: it reads the file on its own
            current = loaded(path)
            if current == self.wanted:
                continue
            self.reloaded.append(unit)
            if self.args.check:
                continue
            if current is None:
                self.fail(f"{unit} has not told which workspace it read after {self.args.timeout:.0f} s "
                          f"({path} missing): see journalctl -u {unit}")
            waiting.append((unit, path))
        if waiting:
            subprocess.run(["systemctl", "reload", *(unit for unit, _ in waiting)], check=True)
        for unit, path in waiting:
            if not wait_for(path, self.wanted, self.deadline):
                self.fail(f"{unit} did not read {self.args.workspace} again within {self.args.timeout:.0f} s "
                          f"(it still reports {loaded(path)}, the file is {self.wanted}): see journalctl -u {unit}")
            self.seconds[unit] = round(time.monotonic() - self.started, 2)

    def refresh(self, units: list[str]) -> None:
        """Has the units read the --refresh locations again from their servers, side by side."""
        if not self.args.refresh:
            return
        self.deadline = time.monotonic() + self.args.timeout
        token = uuid.uuid4().hex
        request = json.dumps({"token": token, "locations": self.args.refresh})
        waiting = []
        for unit in units:
            if unit in self.reloaded:
                continue  # it has just read every location
            path, pid = unit_state(unit)
            if not pid or not catches_sigusr1(pid):
                print(f"{unit} (pid {pid}) does not take SIGUSR1: it sees the new servers through its watch",
                      file=sys.stderr)
                continue
            self.refreshed.append(unit)
            if self.args.check:
                continue
            write_atomically(path.parent / "refresh.request", request + "\n")
            os.kill(pid, signal.SIGUSR1)
            waiting.append((unit, path.parent / "refresh.done"))
        for unit, done in waiting:
            if not wait_for(done, token, self.deadline):
                self.fail(f"{unit} did not read {', '.join(self.args.refresh)} again within "
                          f"{self.args.timeout:.0f} s: see journalctl -u {unit}")
            self.seconds.setdefault(unit, round(time.monotonic() - self.started, 2))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--check", action="store_true", help="report what would be reloaded, change nothing")
    parser.add_argument("--refresh", action="append", default=[], metavar="LOCATION")
    parser.add_argument("units", nargs="+", metavar="UNIT")
    args = parser.parse_args()
    sync = Sync(args)
    daemon_read = location_names(unit_state(args.units[0])[0].parent / "workspace.yaml")
    if daemon_read is None or not location_names(args.workspace) <= daemon_read:
        sync.reload(args.units[:1])
        sync.reload(args.units[1:])
    else:  # locations removed or changed, none added
        sync.reload(args.units)
    sync.refresh(args.units)
    print(json.dumps({"reloaded": sync.reloaded, "refreshed": sync.refreshed, "seconds": sync.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
