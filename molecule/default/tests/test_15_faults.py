"""Faults heal themselves: run workers that die, code servers killed, a PostgreSQL outage."""

import re
import time

from dagster_platform import daemon_code_servers, record

UNIT = "dagster-code@platform_alerts.service"


def run_workers(host, unit: str) -> list[int]:
    """Run workers under a code server: the first multiprocessing children (as the drain counts)."""
    return spawned_under(host, int(host.check_output(f"systemctl show -P MainPID {unit}")))


def spawned_under(host, root: int) -> list[int]:
    """The first multiprocessing (spawn) processes under a process: a server's run
    workers, or a run worker's step processes."""
    rows = [line.split(None, 2) for line in host.check_output("ps -e -o pid=,ppid=,args=").splitlines()]
    children = {}
    for pid, ppid, args in (row + [""] * (3 - len(row)) for row in rows):
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, todo = [], [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            if "spawn_main" in args:
                found.append(pid)
            else:
                todo.append(pid)
    return found


def a_new_run_succeeds(web, host) -> None:
    run_id, gate = web.launch_gated()
    host.check_output(f"touch {gate}")
    assert web.wait_run(run_id) == "SUCCESS", web.run_messages(run_id)
    host.check_output(f"rm -f {gate}")


def test_a_run_whose_worker_is_killed_fails_and_the_server_serves_on(web, host):
    run_id, _ = web.launch_gated()
    server = host.check_output(f"systemctl show -P MainPID {UNIT}")
    (worker,) = run_workers(host, UNIT)
    host.run_test(f"kill -KILL {worker}")
    killed = time.monotonic()
    assert web.wait_run(run_id, timeout=120) == "FAILURE"
    record("run_worker_killed_to_run_failed_seconds", round(time.monotonic() - killed, 1))
    reason = f"Run execution process for {run_id} was terminated by signal 9"
    assert any(reason in message for message in web.run_messages(run_id)), web.run_messages(run_id)
    assert host.check_output(f"systemctl show -P MainPID {UNIT}") == server
    a_new_run_succeeds(web, host)


def test_a_step_killed_as_by_the_oom_killer_fails_its_run_alone(web, host):
    """Over a location's memory_max the kernel kills the largest process of the unit: a
    run's step. Here the step is killed by hand: the lab's hosts cannot enforce MemoryMax
    (their memory controller is read-only under this machine's cgroup v1 layout)."""
    run_id, _ = web.launch_gated()
    server = host.check_output(f"systemctl show -P MainPID {UNIT}")
    (worker,) = run_workers(host, UNIT)
    deadline = time.monotonic() + 60
    while not (steps := spawned_under(host, worker)):
        assert time.monotonic() < deadline, "the run's step process did not start"
        time.sleep(0.2)
    host.run_test(f"kill -KILL {steps[0]}")
    killed = time.monotonic()
    assert web.wait_run(run_id, timeout=120) == "FAILURE", web.run_messages(run_id)
    record("step_killed_to_run_failed_seconds", round(time.monotonic() - killed, 1))
    messages = web.run_messages(run_id)
    assert any("wait_for_gate" in message and "terminated by signal 9" in message for message in messages), messages
    assert host.check_output(f"systemctl show -P MainPID {UNIT}") == server
    a_new_run_succeeds(web, host)


def test_a_run_fails_with_the_reason_when_its_code_server_is_killed(web, host):
    """Every process of the unit killed at once (as by a crash): no worker lives to report,
    and Dagster's run monitoring cannot see it with the DefaultRunLauncher. The server's
    launcher fails the run as the unit starts again."""
    run_id, _ = web.launch_gated()
    server = host.check_output(f"systemctl show -P MainPID {UNIT}")
    host.run_test(f"systemctl kill --signal=KILL {UNIT}")
    killed = time.monotonic()
    assert web.wait_run(run_id, timeout=120) == "FAILURE", web.run_messages(run_id)
    record("code_server_killed_to_run_failed_seconds", round(time.monotonic() - killed, 1))
    messages = web.run_messages(run_id)
    assert any("The run's worker is gone" in message for message in messages), messages
    assert host.check_output(f"systemctl show -P MainPID {UNIT}") not in (server, "0")
    # Down for more than a few seconds, the location showed as unloaded; the webserver
    # loads it again once the new server answers.
    deadline = time.monotonic() + 120
    while (entry := web.locations()["platform_alerts"])["locationOrLoadError"]["__typename"] != "RepositoryLocation" \
            or entry["loadStatus"] != "LOADED":
        assert time.monotonic() < deadline, entry
        time.sleep(0.5)
    a_new_run_succeeds(web, host)


def hello_listens(host) -> bool:
    """gRPC listens on an IPv6 socket: ss shows [::ffff:127.0.0.1]:4000."""
    return re.search(r"127\.0\.0\.1\]?:4000\s", host.run("ss -Hltn").stdout) is not None


def test_a_restart_returns_once_the_code_server_listens(host):
    """Type=notify: the launcher says ready once the port accepts connections, which
    `dagster api grpc` does after loading the code."""
    assert host.check_output("systemctl show -P Type dagster-code@hello.service") == "notify"
    host.run_test("systemctl restart dagster-code@hello.service")
    assert hello_listens(host)
    assert host.service("dagster-code@hello.service").is_running


def test_a_launch_right_after_a_code_server_restart_succeeds(web, host):
    """A restart still under way (systemd restarting a crashed server, or `--no-block`):
    the server is not listening yet when the launch asks it for the execution plan, or
    the webserver has already marked the location unreachable. Either way the launch
    waits for the server (it answered HTTP 500, or "job not found", before)."""
    since = host.check_output("date +%s")
    host.run_test("systemctl restart --no-block dagster-code@hello.service")
    deadline = time.monotonic() + 60
    while hello_listens(host):  # the old server drains, then stops
        assert time.monotonic() < deadline, "the old code server of hello still listens after 60 s"
        time.sleep(0.1)
    assert web.wait_run(web.launch("hello", "hello_job")) == "SUCCESS"
    journal = host.check_output(f"journalctl -u dagster-webserver --since @{since} --no-pager")
    assert "ExecutionPlanSnapshot: code server 127.0.0.1:4000 restarting" in journal \
        or "launch: location hello unreachable (code server restarting?)" in journal, journal[-3000:]


def test_an_in_process_code_server_of_the_daemon_that_died_is_replaced(web, host):
    """The daemon keeps its servers of in-process locations (test_10); one that exits is
    started again at the daemon's next workspace refresh (every 60 s), and the runs the
    daemon launches from its queue then succeed."""
    _, servers = daemon_code_servers(host)
    ((pid, _),) = servers["file_example"]
    host.run_test(f"kill -KILL {pid}")
    killed = time.monotonic()
    while not (replaced := daemon_code_servers(host)[1].get("file_example")):
        assert time.monotonic() - killed < 120, "no new server of file_example in the daemon after 120 s"
        time.sleep(1)
    record("daemon_in_process_server_replaced_seconds", round(time.monotonic() - killed, 1))
    assert [p for p, _ in replaced] != [pid]
    assert web.wait_run(web.launch("file_example", "file_job")) == "SUCCESS"


def failed_units(host, patterns: str = "'dagster-*' 'postgresql*' nginx.service") -> list[str]:
    return host.check_output(f"systemctl list-units --failed --no-legend --plain {patterns}").splitlines()


def test_a_60_s_postgresql_outage_leaves_nothing_failed(web, host):
    """The daemon is restarted during the outage (it cannot start without the database)
    and a run queued before it is launched after it; the first launch after the database
    is back succeeds."""
    host.run_test("systemctl stop dagster-daemon.service")
    queued = web.launch("hello", "hello_job")
    assert web.run_status(queued) == "QUEUED"
    clusters = host.check_output(
        "systemctl list-units --no-legend --plain --type=service 'postgresql@*' | cut -d' ' -f1").split()
    assert clusters, "no PostgreSQL cluster unit"
    host.run_test("systemctl stop postgresql.service " + " ".join(clusters))
    down = time.monotonic()
    try:
        host.run_test("systemctl start --no-block dagster-daemon.service")
        while time.monotonic() - down < 60:  # the outage lasts 60 s whatever happens meanwhile
            assert failed_units(host, "'dagster-*' nginx.service") == [], "failed during the outage"
            time.sleep(5)
    finally:
        host.run_test("systemctl start postgresql.service " + " ".join(clusters))
    back = time.monotonic()
    launched = web.launch("hello", "hello_job")  # at once: no HTTP 500 from a dead pooled connection
    assert web.wait_run(queued) == "SUCCESS", web.run_messages(queued)
    record("postgresql_outage_60s_to_queued_run_success_seconds", round(time.monotonic() - back, 1))
    assert web.wait_run(launched) == "SUCCESS", web.run_messages(launched)
    assert failed_units(host) == []
    for unit in ("dagster-webserver", "dagster-daemon", "dagster-code@hello", "dagster-code@platform_alerts"):
        assert host.service(unit).is_running, unit
