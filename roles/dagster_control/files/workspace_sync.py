"""Makes the control plane's services run the workspace.yaml on disk:
`workspace_sync.py [--check] --workspace FILE --timeout SECONDS UNIT...`.

Each service (control_plane.py) writes the SHA-1 of the workspace it has read to the
file its unit names in DAGSTER_WORKSPACE_LOADED_FILE, at start and after each reload. A service whose digest differs from the
file's is reloaded (SIGHUP through `systemctl reload`), one at a time in the order
given, and waited for until it has read the file. A missing file means the
service is starting (its runtime directory goes with each stop): it is waited for, not
signalled, since it reads the file as it starts. Because the digests are compared on
every run, a deploy interrupted after writing the file is finished by the next one.

Prints {"reloaded": [...], "seconds": {...}} on stdout; exits 1 with the reason when a
service did not read the file in time. Standard library only: runs on the host's python3.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path


def loaded(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def loaded_file(unit: str) -> Path:
    environment = subprocess.run(["systemctl", "show", "-P", "Environment", unit],
                                 capture_output=True, text=True, check=True).stdout.split()
    for variable in environment:
        name, _, value = variable.partition("=")
        if name == "DAGSTER_WORKSPACE_LOADED_FILE":
            return Path(value)
    raise SystemExit(f"{unit} sets no DAGSTER_WORKSPACE_LOADED_FILE: is its unit this role's?")


def wait_for(path: Path, wanted: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if loaded(path) == wanted:
            return True
        time.sleep(0.2)
    return loaded(path) == wanted


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--check", action="store_true", help="report what would be reloaded, change nothing")
    parser.add_argument("units", nargs="+", metavar="UNIT")
    args = parser.parse_args()
    wanted = hashlib.sha1(args.workspace.read_bytes()).hexdigest()
    reloaded, seconds = [], {}
    for unit in args.units:
        path = loaded_file(unit)
        started = time.monotonic()
        deadline = started + args.timeout
        while loaded(path) is None and time.monotonic() < deadline and not args.check:
            time.sleep(0.2)  # starting: it reads the file on its own
        current = loaded(path)
        if current == wanted:
            continue
        reloaded.append(unit)
        if args.check:
            continue
        if current is None:
            print(f"{unit} has not told which workspace it read after {args.timeout:.0f} s "
                  f"({path} missing): see journalctl -u {unit}", file=sys.stderr)
            return 1
        subprocess.run(["systemctl", "reload", unit], check=True)
        if not wait_for(path, wanted, deadline):
            print(f"{unit} did not read {args.workspace} again within {args.timeout:.0f} s "
                  f"(it still reports {loaded(path)}, the file is {wanted}): see journalctl -u {unit}", file=sys.stderr)
            return 1
        seconds[unit] = round(time.monotonic() - started, 2)
    print(json.dumps({"reloaded": reloaded, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
