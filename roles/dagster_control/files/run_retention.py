"""Delete finished runs older than a number of days, with their event logs and compute logs.

    run_retention.py DAYS BATCH

Run by dagster-run-retention.service in the control plane venv. Only runs whose status
is SUCCESS, FAILURE or CANCELED and which last changed more than DAYS ago are deleted,
oldest first, BATCH at a time, through Dagster's own API: the compute log manager
deletes the run's captured output on this host, DagsterInstance.delete_run its record
and event log. Queued and running runs are never selected. $DAGSTER_HOME/run_retention.json
records the last pass for playbooks/status.yml.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(arg.isdigit() for arg in argv) or int(argv[0]) < 1 or int(argv[1]) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    days, batch = int(argv[0]), int(argv[1])
    now = datetime.datetime.now(datetime.timezone.utc)
    cutoff = now - datetime.timedelta(days=days)
    started = time.monotonic()
    deleted = 0
    with DagsterInstance.get() as instance:
        while records := instance.get_run_records(
            filters=RunsFilter(statuses=FINISHED, updated_before=cutoff), limit=batch, ascending=True
        ):
            for record in records:
                run_id = record.dagster_run.run_id
                instance.compute_log_manager.delete_logs(prefix=[run_id])
                instance.delete_run(run_id)
                deleted += 1
            print(f"deleted {deleted} runs so far", flush=True)
    seconds = time.monotonic() - started
    summary = {"last_pass": now.isoformat(timespec="seconds"), "cutoff": cutoff.isoformat(timespec="seconds"),
               "deleted": deleted, "seconds": round(seconds, 3),
               "runs_per_second": round(deleted / seconds, 1) if deleted else None}
    record = Path(os.environ["DAGSTER_HOME"]) / "run_retention.json"
    partial = record.with_name(f".{record.name}.partial")
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    partial.replace(record)
    print(f"deleted {deleted} finished runs last changed before {summary['cutoff']} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
