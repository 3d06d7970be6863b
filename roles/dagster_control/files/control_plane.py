"""Runs dagster-webserver or dagster-daemon so that they ride over restarts of the
database and of code servers: `control_plane.py dagster-webserver|dagster-daemon ARGS...`.

The webserver keeps its PostgreSQL connections in a pool. After the database restarts
every pooled connection is dead, and the request that draws one fails (HTTP 500). A
ping when a connection leaves the pool (SQLAlchemy's pessimistic disconnect handling)
makes the pool replace a dead connection before the request uses it.

A launch asks the location's code server for the execution plan, and so does the
daemon when it retries a failed run. While that server restarts (new code, a crash) it
does not listen for a few seconds, and then forwards to a server still starting: the
launch failed with HTTP 500, the retry was lost for good (DagsterUserCodeUnreachableError,
gRPC UNAVAILABLE, then UNKNOWN "failed to connect"). The calls a launch makes are
tried again while the server is not listening: for up to CODE_SERVER_RESTART_SECONDS
in the webserver (a user waits on the launch), DAEMON_CODE_SERVER_RESTART_SECONDS in
the daemon (a retry was lost when a drain and a start under load took 42 s). Health
checks and workspace loads still fail fast. When the webserver has already marked the
location unreachable (its watch of the server saw it go), a launch waits as long for
the location to load again instead of answering "job not found". A run the daemon
dequeues while that server shuts down (a deploy, after the drain) is refused by it; the
start is tried again until the server that replaces it takes the run. A run that failed
while its server was replaced (a deploy that stopped it past the drain) is retried once
the location loads again: Dagster gave the retry up for good when the daemon's copy of
the location was still the unreachable one.

The daemon starts the servers of in-process locations (python_module, python_file,
python_package) itself, and every 60 s forgets them all and starts new ones, to pick up
code changed in place: three Pythons importing Dagster and the location's code each
minute, most of an idle control host's CPU. Here code changes only through a deploy,
which restarts the daemon; it starts a new server only for a location whose server
failed or exited.

Each of them watches every gRPC location for a new server (a restart) with a call on a
new channel every second: with the read-only webserver, three calls a second per location
kept an idle host's CPU busy in proportion to its locations. Every WATCH_SECONDS instead: a deploy reloads the locations it restarted
itself, so the watch only catches restarts outside a deploy, 5 s later at most.

Both read workspace.yaml again on SIGHUP (`systemctl reload`), as the daemon does by
itself every 60 s: every location is read from its running server (no server restarts,
no run in flight touched), and an in-process location gets a server only if it has none
yet or its server exited. The daemon does so at once, not at the end of its main loop's
5 s sleep. When a service has read the workspace (at start, and at each reload) it writes
the SHA-1 of the file it read to $DAGSTER_WORKSPACE_LOADED_FILE, and the file itself
beside it (workspace.yaml), so a deploy can tell which services still run an older
workspace and which locations are new to them (workspace_sync.py).

On SIGUSR1 both read again, from their running servers, the locations named in
refresh.request (JSON: token, locations) beside that file, then write the token to
refresh.done. A deploy that restarted code servers has every service see the new code
at once this way; Dagster's reloadRepositoryLocation would instead have the new server
load its code a second time.

When the command returns or is interrupted, Dagster has shut itself down (threads
joined, servers stopped). Python's own teardown after that, which only frees memory,
took a stopped daemon 15-20 s of CPU on a loaded host, past its unit's stop timeout:
it is skipped.
"""

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path

import grpc
from dagster._core.errors import DagsterCodeLocationLoadError, DagsterUserCodeUnreachableError
from dagster._core.remote_representation.grpc_server_registry import GrpcServerRegistry
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon import controller as daemon_controller
from dagster._daemon.controller import RELOAD_WORKSPACE_INTERVAL, DagsterDaemonController
from dagster._grpc import server_watcher
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import StartRunResult
from dagster._serdes import deserialize_value
from sqlalchemy import event, exc
from sqlalchemy.pool import Pool

WATCH_SECONDS = 5  # Dagster's 1: see the docstring
CODE_SERVER_RESTART_SECONDS = 30.0  # the webserver's; the daemon's is set below, at start
DAEMON_CODE_SERVER_RESTART_SECONDS = 120.0
LAUNCH_METHODS = {"ExecutionPlanSnapshot", "ExternalPipelineSubsetSnapshot", "ExternalJob"}
START_METHOD = "StartRun"
SHUTTING_DOWN = "after telling it to shut down"


@event.listens_for(Pool, "checkout")
def ping(dbapi_connection, connection_record, connection_proxy):
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:  # any failure means: do not hand this connection out
        raise exc.DisconnectionError(str(error)) from error


def restarting(method: str, error: DagsterUserCodeUnreachableError) -> bool:
    cause = error.__cause__
    if not isinstance(cause, grpc.RpcError):
        return False
    if method == START_METHOD:
        # Only a connection never made: a call cut off half-way may have started the run.
        return "failed to connect" in (cause.details() or "").lower()
    if method not in LAUNCH_METHODS:
        return False
    # Not listening yet, or (a `dagster code-server start` proxy, which a location's own
    # launcher may run) listening while the server behind it is still starting: the proxy
    # answers UNKNOWN, "failed to connect".
    return cause.code() == grpc.StatusCode.UNAVAILABLE or (
        cause.code() == grpc.StatusCode.UNKNOWN and "failed to connect" in (cause.details() or ""))


def keep_waiting(client, method: str, error: DagsterUserCodeUnreachableError, deadline: float, first: bool) -> bool:
    """Whether to try the call again; says so in the journal the first time."""
    if not restarting(method, error) or time.monotonic() > deadline:
        return False
    if first:
        print(f"{method}: code server {client._server_address} restarting, waiting for it (at most "
              f"{CODE_SERVER_RESTART_SECONDS:.0f} s)", file=sys.stderr, flush=True)
    return True


def wait_for_restarts(query):
    def retried(self, method, *args, **kwargs):
        deadline = time.monotonic() + CODE_SERVER_RESTART_SECONDS
        first = True
        while True:
            try:
                return query(self, method, *args, **kwargs)
            except DagsterUserCodeUnreachableError as error:
                if not keep_waiting(self, method, error, deadline, first):
                    raise
            first = False
            time.sleep(0.5)

    return retried


def gen_wait_for_restarts(query):
    async def retried(self, method, *args, **kwargs):
        deadline = time.monotonic() + CODE_SERVER_RESTART_SECONDS
        first = True
        while True:
            try:
                return await query(self, method, *args, **kwargs)
            except DagsterUserCodeUnreachableError as error:
                if not keep_waiting(self, method, error, deadline, first):
                    raise
            first = False
            await asyncio.sleep(0.5)

    return retried


def start_after_restarts(start_run):
    """A run the daemon dequeues while its location's server shuts down for a deploy is
    refused ("Tried to start a run on a server after telling it to shut down"), and Dagster
    then fails it for good (a drained run's retry was lost so in a Debian 13 lab run). The
    refusal changes nothing on the server: the start is tried again until the server that
    replaces it takes the run (the calls while it does not listen wait in _query)."""
    def started(self, execute_run_args):
        deadline = time.monotonic() + CODE_SERVER_RESTART_SECONDS
        first = True
        while True:
            serialized = start_run(self, execute_run_args)
            result = deserialize_value(serialized, StartRunResult)
            if result.success or SHUTTING_DOWN not in (result.message or "") or time.monotonic() > deadline:
                return serialized
            if first:
                print(f"StartRun: code server {self._server_address} shutting down, waiting for the next one "
                      f"(at most {CODE_SERVER_RESTART_SECONDS:.0f} s)", file=sys.stderr, flush=True)
                first = False
            time.sleep(0.5)

    return started


def retry_after_restarts(retry_run):
    """The daemon's retry_run, which raises DagsterCodeLocationLoadError before doing
    anything when its copy of the run's location failed to load; Dagster then tags the run
    "will not retry". While the cause is an unreachable server, the location is read
    again and the retry tried again, for up to CODE_SERVER_RESTART_SECONDS."""
    def retried(failed_run, workspace_context):
        deadline = time.monotonic() + CODE_SERVER_RESTART_SECONDS
        first = True
        while True:
            try:
                return retry_run(failed_run, workspace_context)
            except DagsterCodeLocationLoadError as error:
                if "DagsterUserCodeUnreachableError" not in str(error) or time.monotonic() > deadline:
                    raise
                location = failed_run.remote_job_origin.location_name
                if first:
                    print(f"retry of run {failed_run.run_id}: location {location} unreachable (code server "
                          f"restarting?), waiting for it (at most {CODE_SERVER_RESTART_SECONDS:.0f} s)",
                          file=sys.stderr, flush=True)
                    first = False
            time.sleep(2)
            try:
                workspace_context.refresh_code_location(location)
            except Exception as error:  # the next try says what is wrong
                print(f"retry: reading location {location} failed ({error!r})", file=sys.stderr, flush=True)

    return retried


def unreachable(context, location: str) -> bool:
    entry = context.get_location_entry(location)
    return bool(entry and entry.load_error and entry.load_error.cls_name == "DagsterUserCodeUnreachableError")


def launch_after_restarts(do_launch):
    """dagster_graphql's do_launch, which waits while the location is unreachable; each
    look is at a new request context (a request's context is a snapshot)."""
    async def launched(graphene_info, execution_params, *args, **kwargs):
        try:
            location = execution_params.selector.location_name
            deadline = time.monotonic() + CODE_SERVER_RESTART_SECONDS
            if unreachable(graphene_info.context, location):
                print(f"launch: location {location} unreachable (code server restarting?), waiting for it "
                      f"(at most {CODE_SERVER_RESTART_SECONDS:.0f} s)", file=sys.stderr, flush=True)
            while unreachable(graphene_info.context, location) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                context = graphene_info.context
                graphene_info = graphene_info._replace(
                    context=context.process_context.create_request_context(source=context._source))
        except Exception as error:  # never worse than Dagster's own launch
            print(f"launch: not waiting for the location ({error!r})", file=sys.stderr, flush=True)
        return await do_launch(graphene_info, execution_params, *args, **kwargs)

    return launched


def forget_stopped_servers(registry):
    """GrpcServerRegistry.clear_all_grpc_endpoints for the daemon's periodic refresh: only
    entries whose server failed to start or has exited, so those are started again."""
    with registry._lock:
        for origin_id, entry in list(registry._active_entries.items()):
            process = getattr(entry, "process", None)  # an ErrorRegistryEntry has none
            if process is None or process.server_process.poll() is not None:
                del registry._active_entries[origin_id]


WORKSPACE_LOADED_FILE = os.environ.get("DAGSTER_WORKSPACE_LOADED_FILE")
workspace_file = None  # set from the command line
reload_requested = threading.Event()
refresh_requested = threading.Event()
contexts = []  # every WorkspaceProcessContext this process made


def set_from_signal(flag: threading.Event):
    """A signal handler that sets `flag` from another thread: Event.set takes a lock that
    the interrupted thread may hold (the daemon's main thread waits on reload_requested)."""
    return lambda signum, frame: threading.Thread(target=flag.set, daemon=True).start()


class SleepUntilReload:
    """`time` for the daemon controller's main loop: its 5 s sleep ends at SIGHUP."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        reload_requested.wait(seconds)


def workspace_content() -> bytes | None:
    try:
        with open(workspace_file, "rb") as workspace:
            return workspace.read()
    except (OSError, TypeError):
        return None


def write_atomically(path: str, content: bytes) -> None:
    """So that a reader sees the old file or the new one."""
    partial = f"{path}.partial"
    with open(partial, "wb") as out:
        out.write(content)
    os.replace(partial, path)


def tell_workspace_loaded(content: bytes | None) -> None:
    """The copy first: a reader that sees the new digest finds the new copy."""
    if not WORKSPACE_LOADED_FILE or content is None:
        return
    write_atomically(os.path.join(os.path.dirname(WORKSPACE_LOADED_FILE), "workspace.yaml"), content)
    write_atomically(WORKSPACE_LOADED_FILE, hashlib.sha1(content).hexdigest().encode() + b"\n")


def telling_workspace_loaded(load):
    """Wraps a WorkspaceProcessContext method that reads workspace.yaml. The file is
    taken before the read: if it changes meanwhile, the next deploy reloads again."""
    def loaded(self, *args, **kwargs):
        content = workspace_content()
        result = load(self, *args, **kwargs)
        tell_workspace_loaded(content)
        return result

    return loaded


def refresh_keeping_servers(context) -> None:
    registry = getattr(context, "_grpc_server_registry", None)
    if registry is not None:
        forget_stopped_servers(registry)
    context.refresh_workspace()


def location_refresher() -> None:
    """The thread that serves SIGUSR1: reads the requested locations again in every
    workspace context, then tells which request it served."""
    runtime = Path(WORKSPACE_LOADED_FILE or "/nonexistent").parent
    while True:
        refresh_requested.wait()
        refresh_requested.clear()
        try:
            request = json.loads((runtime / "refresh.request").read_text())
            token, locations = str(request["token"]), list(request["locations"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"refresh: no readable request in {runtime} ({error!r})", file=sys.stderr, flush=True)
            continue
        started = time.monotonic()
        for context in list(contexts):
            for name in locations:
                try:
                    context.refresh_code_location(name)
                except KeyError:
                    pass  # not in this workspace yet: a reload reads it
                except Exception as error:  # the deploy's load check reports what is wrong
                    print(f"refresh: reading location {name} failed ({error!r})", file=sys.stderr, flush=True)
        try:
            partial = runtime / "refresh.done.partial"
            partial.write_text(token + "\n")
            os.replace(partial, runtime / "refresh.done")
        except OSError as error:  # the deploy waiting for the token reports it
            print(f"refresh: cannot answer in {runtime} ({error!r})", file=sys.stderr, flush=True)
            continue
        print(f"refresh: {', '.join(locations)} read again in {time.monotonic() - started:.1f} s",
              file=sys.stderr, flush=True)


def webserver_reloader() -> None:
    """The webserver's thread that serves SIGHUP (a signal handler must not block the
    event loop), for every workspace context the webserver made."""
    while True:
        reload_requested.wait()
        reload_requested.clear()
        for context in list(contexts):
            try:
                started = time.monotonic()
                refresh_keeping_servers(context)
                print(f"reload: workspace read again in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
            except Exception as error:  # the deploy waiting for the digest reports it
                print(f"reload: reading the workspace failed ({error!r})", file=sys.stderr, flush=True)


def reload_on_request(check_workspace_freshness):
    """The daemon's periodic refresh (its main loop, every 5 s), due at once after SIGHUP."""
    def checked(self, last_workspace_update_time: float) -> float:
        if reload_requested.is_set():
            reload_requested.clear()
            last_workspace_update_time = min(last_workspace_update_time, time.time() - RELOAD_WORKSPACE_INTERVAL - 1)
        return check_workspace_freshness(self, last_workspace_update_time)

    return checked


DagsterGrpcClient._query = wait_for_restarts(DagsterGrpcClient._query)
DagsterGrpcClient.start_run = start_after_restarts(DagsterGrpcClient.start_run)
DagsterGrpcClient._gen_query = gen_wait_for_restarts(DagsterGrpcClient._gen_query)


if __name__ == "__main__":
    # The default action of SIGHUP and SIGUSR1 ends the process: take them over first.
    signal.signal(signal.SIGHUP, set_from_signal(reload_requested))
    signal.signal(signal.SIGUSR1, set_from_signal(refresh_requested))
    program = sys.argv.pop(1)
    sys.argv[0] = program
    server_watcher.WATCH_INTERVAL = WATCH_SECONDS
    for flag in ("--workspace", "-w"):
        if flag in sys.argv[:-1]:
            workspace_file = sys.argv[sys.argv.index(flag) + 1]
    for method in ("__init__", "refresh_workspace", "reload_workspace"):
        setattr(WorkspaceProcessContext, method, telling_workspace_loaded(getattr(WorkspaceProcessContext, method)))
    made = WorkspaceProcessContext.__init__

    def remembered(self, *args, **kwargs):
        made(self, *args, **kwargs)
        contexts.append(self)

    WorkspaceProcessContext.__init__ = remembered
    threading.Thread(target=location_refresher, name="location-refresher", daemon=True).start()
    if program == "dagster-daemon":
        GrpcServerRegistry.clear_all_grpc_endpoints = forget_stopped_servers
        DagsterDaemonController.check_workspace_freshness = reload_on_request(
            DagsterDaemonController.check_workspace_freshness)
        daemon_controller.time = SleepUntilReload()
        CODE_SERVER_RESTART_SECONDS = DAEMON_CODE_SERVER_RESTART_SECONDS
        from dagster._daemon.auto_run_reexecution import auto_run_reexecution

        auto_run_reexecution.retry_run = retry_after_restarts(auto_run_reexecution.retry_run)
    if program == "dagster-webserver":
        from dagster_graphql.implementation.execution import launch_execution

        launch_execution.do_launch = launch_after_restarts(launch_execution.do_launch)
        threading.Thread(target=webserver_reloader, name="workspace-reloader", daemon=True).start()
    (main,) = entry_points(group="console_scripts", name=program)
    try:
        code = main.load()()
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:  # a stop signal that reached Python as KeyboardInterrupt
        code = 0
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
