#!/usr/bin/python3
"""Publish the last dump's outcome for prometheus-node-exporter's textfile collector.

    dagster-backup-metrics DIR MAX_AGE_HOURS TEXTFILE_DIR

Run as root after every dump (pg-dump-dagster.service's ExecStopPost): reads DIR/status.json and writes TEXTFILE_DIR/dagster_backup.prom in one
rename. Does nothing when TEXTFILE_DIR does not exist (no node exporter).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path


def epoch(text: str | None) -> float | None:
    return datetime.datetime.fromisoformat(text).timestamp() if text else None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    directory, max_age_hours, textfiles = Path(argv[0]), float(argv[1]), Path(argv[2])
    if not textfiles.is_dir():
        return 0
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        status = {}  # no dump yet: only the limit is published
    lines = ["# HELP dagster_backup_max_age_seconds Age a dump may reach before it is overdue.",
             "# TYPE dagster_backup_max_age_seconds gauge",
             f"dagster_backup_max_age_seconds {max_age_hours * 3600:.0f}"]
    for name, value, meaning in (
            ("last_success_timestamp_seconds", epoch(status.get("last_success")), "When the last complete dump finished."),
            ("last_attempt_timestamp_seconds", epoch(status.get("last_attempt")), "When the last dump was attempted."),
            ("last_attempt_ok", (1 if status.get("ok") else 0) if status else None, "1 when the last attempt dumped every database.")):
        if value is not None:
            lines += [f"# HELP dagster_backup_{name} {meaning}", f"# TYPE dagster_backup_{name} gauge",
                      f"dagster_backup_{name} {value:.0f}"]
    partial = textfiles / ".dagster_backup.prom.partial"
    partial.write_text("\n".join(lines) + "\n")
    partial.chmod(0o644)
    os.replace(partial, textfiles / "dagster_backup.prom")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
