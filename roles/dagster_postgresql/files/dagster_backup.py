#!/usr/bin/python3
"""Dump the platform's databases (pg_dump -Fc), keep the newest of each, record the result.

    dagster-backup DIR KEEP DATABASE [DATABASE ...]

Run as postgres (peer login over the socket). Each dump is written under a temporary
name, synced, then renamed: a file named <db>-<stamp>.dump is always complete. The
dumps of one run share its stamp, which playbooks/restore.yml restores together.
DIR/status.json records the last attempt and the last success (time, files, sizes).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATUS = "status.json"


def sync_rename(partial: Path, final: Path) -> None:
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    partial.rename(final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def dump(directory: Path, database: str, stamp: str) -> dict:
    folder = directory / database
    folder.mkdir(mode=0o700, exist_ok=True)
    final = folder / f"{database}-{stamp}.dump"
    partial = folder / f".{final.name}.partial"
    started = time.monotonic()
    subprocess.run(["pg_dump", "--format=custom", f"--file={partial}", database], check=True)
    sync_rename(partial, final)
    return {"file": str(final), "bytes": final.stat().st_size, "seconds": round(time.monotonic() - started, 3)}


def prune(directory: Path, database: str, keep: int) -> int:
    """Delete all but the newest `keep` dumps and any partial left by a killed run."""
    folder = directory / database
    for partial in folder.glob(".*.partial"):
        partial.unlink()
    dumps = sorted(folder.glob(f"{database}-*.dump"))  # UTC stamps sort by time
    for old in dumps[:-keep]:
        old.unlink()
    return min(len(dumps), keep)


def write_status(directory: Path, status: dict) -> None:
    partial = directory / f".{STATUS}.partial"
    partial.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    partial.chmod(0o640)
    sync_rename(partial, directory / STATUS)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[1].isdigit() or int(argv[1]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory, keep, databases = Path(argv[0]), int(argv[1]), argv[2:]
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    try:
        previous = json.loads((directory / STATUS).read_text())
    except (OSError, ValueError):
        previous = {}
    status = {"last_attempt": now.isoformat(timespec="seconds"), "stamp": stamp, "ok": False,
              "last_success": previous.get("last_success"), "databases": previous.get("databases", {})}
    started = time.monotonic()
    try:
        dumps = {database: dump(directory, database, stamp) for database in databases}
    except (OSError, subprocess.CalledProcessError) as error:
        status["error"] = str(error)
        write_status(directory, status)
        print(f"dagster-backup: {error}; the earlier dumps are kept", file=sys.stderr)
        return 1
    kept = {database: prune(directory, database, keep) for database in databases}
    status.update(ok=True, last_success=status["last_attempt"], databases=dumps, kept=kept,
                  seconds=round(time.monotonic() - started, 3))
    write_status(directory, status)
    for database, done in dumps.items():
        print(f"{database}: {done['file']}, {done['bytes']} bytes in {done['seconds']} s; {kept[database]} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
