"""Start and stop a location's gRPC code server (dagster-code@<location>.service).

serve LOCATION ARGS...
    Runs `dagster ARGS...` in this process and, alongside, fails the runs that the
    previous server process of this unit left behind. Every run worker of a location is
    a child of its code server, in the unit's cgroup, and systemd empties that cgroup
    (KillMode=control-group) before it starts the unit again: a run of this location
    still STARTED whose worker started before this process cannot be alive any more
    (server killed or crashed, host rebooted). With the DefaultRunLauncher, Dagster's
    run monitoring cannot see that, and such a run would stay STARTED for
    max_runtime_seconds. With Type=notify it tells systemd the server is ready once its
    port accepts connections: `dagster api grpc --lazy-load-user-code` loads the code (or
    records the load error) before it listens, so `systemctl start` and `restart` return
    when the location can be read, and nothing downstream has to poll for it.

drain SECONDS
    ExecStop: waits, at most SECONDS, until the server's run workers have finished, so
    that a restart (new code) or a shutdown lets in-flight runs complete. The server
    keeps serving meanwhile. Standard library only: it runs on every stop.
"""

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

STARTED_AT = time.time()


def log(message):
    print(message, file=sys.stderr, flush=True)


def fail_runs_left_behind(location):
    while True:  # the database may still be starting (boot): try until it answers
        try:
            from dagster import DagsterInstance
            from dagster._core.events import JobFailureData, RunFailureReason
            from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

            with DagsterInstance.get() as instance:
                records = instance.get_run_records(
                    RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING])
                )
                for record in records:
                    run = record.dagster_run
                    origin = run.remote_job_origin
                    if origin is None or origin.location_name != location:
                        continue
                    if record.start_time is None or record.start_time >= STARTED_AT:
                        continue  # started by this server, or no start recorded to compare
                    message = (
                        f"The run's worker is gone: the code server of location {location} "
                        f"(dagster-code@{location}.service on {os.uname().nodename}) started "
                        f"again at {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(STARTED_AT))}, "
                        "and the worker ended with the previous server process "
                        "(killed, crashed, or its host rebooted)."
                    )
                    log(f"run {run.run_id}: {message}")
                    if run.status == DagsterRunStatus.CANCELING:
                        instance.report_run_canceled(run, message)
                    else:
                        instance.report_run_failed(
                            run, message,
                            JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
                        )
            return
        except Exception as error:  # keep serving: this is housekeeping
            # Short and steady: one query, and a run left behind should fail soon after boot.
            log(f"cannot check for runs left behind yet ({error!r}); trying again in 3 s")
            time.sleep(3)


def notify_ready_once_listening(bind, port):
    notify = os.environ.get("NOTIFY_SOCKET", "")
    if not notify:
        return  # not under Type=notify
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    address = "\0" + notify[1:] if notify.startswith("@") else notify
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as channel:
        channel.sendto(b"READY=1", address)
    log(f"serving on {host}:{port}")


def wait_for_database():
    """`dagster api grpc` reads the instance once, as it starts, and a database that does
    not answer yet (a boot: the code server can start before the cluster) would be served
    as the location's load error until the server restarts. So the server starts once
    the database answers; until then the unit is `activating`."""
    from dagster import DagsterInstance

    said = False
    while True:
        try:
            with DagsterInstance.get() as instance:
                instance.get_run_records(limit=1)
            return
        except Exception as error:  # not answering yet: keep trying, within TimeoutStartSec
            if not said:
                log(f"waiting for the database before serving ({error!r})")
                said = True
            time.sleep(1)


def serve(location, args):
    from dagster._cli import main

    wait_for_database()

    threading.Thread(target=fail_runs_left_behind, args=(location,), daemon=True,
                     name="fail-runs-left-behind").start()
    threading.Thread(target=notify_ready_once_listening, daemon=True, name="notify-ready",
                     args=(os.environ["DAGSTER_CODE_BIND"], os.environ["DAGSTER_CODE_PORT"])).start()
    sys.argv = ["dagster", *args]
    try:
        main()  # click's: always ends in SystemExit
    except SystemExit as done:
        # Dagster has shut the server down by now. Python's own teardown of the modules it
        # loaded, which only frees memory, took 0.8 s of every stop and restart: skipped.
        if done.code is not None and not isinstance(done.code, int):
            log(str(done.code))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(done.code if isinstance(done.code, int) else int(done.code is not None))


def run_workers(server_pid):
    """The server's run workers: the first multiprocessing spawn children under it (their
    own step processes are spawned too, and are not counted again)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), cmdline))
    found, todo = [], [server_pid]
    while todo:
        for pid, cmdline in children.get(todo.pop(), []):
            if b"spawn_main" in cmdline:
                found.append(pid)
            else:
                todo.append(pid)
    return found


def drain(seconds):
    server = os.environ.get("MAINPID", "")
    if not server.isdigit():
        return  # the server is gone already: nothing left to wait for
    deadline = time.monotonic() + seconds
    said = 0.0
    while workers := run_workers(int(server)):
        left = deadline - time.monotonic()
        if left <= 0:
            log(f"{len(workers)} run worker(s) still busy after {seconds} s: stopping them")
            return
        if time.monotonic() - said >= 10:
            log(f"waiting up to {int(left)} s for {len(workers)} run worker(s) to finish")
            said = time.monotonic()
        time.sleep(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) > 3:
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["drain"] and len(sys.argv) == 3:
        drain(int(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve LOCATION DAGSTER_ARGS... | drain SECONDS")
