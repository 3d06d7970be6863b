"""The exporter against a real webserver and daemon (`dagster dev`, SQLite instance)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds=120, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-f", str(HERE / "defs.py"), "-h", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/graphql"

    def loaded():
        try:
            body = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"})
            request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
            entries = json.loads(urllib.request.urlopen(request, timeout=2).read())["data"]["workspaceOrError"]["locationEntries"]
            return entries and all(e["loadStatus"] == "LOADED" for e in entries)
        except OSError:
            return False

    try:
        wait_for(loaded, 180, "the webserver to load the location")
        yield {"url": url, "home": home, "env": env}
    finally:
        # dagster dev stops its webserver and daemon first; under load that can take long.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def scrape(collector) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def execute(dagster, job: str) -> str:
    """A run of JOB in the instance the webserver reads; its run id."""
    script = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import dagster as dg, defs; "
              f"print(defs.{job}.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False).run_id)")
    return subprocess.run([sys.executable, "-c", script], env=dagster["env"], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def finished(samples: dict, job: str, status: str):
    return samples.get(("dagster_runs_finished_total", (("job_name", job), ("status", status))))


def test_finished_runs_are_counted_by_job_and_status(dagster):
    from dagster_exporter import DagsterCollector
    collector = DagsterCollector(dagster["url"], [])
    before = scrape(collector)
    assert before[("dagster_up", ())] == 1
    # Every known job's series exist from 0, so that increase() counts their first run.
    assert {(job, status): finished(before, job, status) for job in ("ok_job", "failing_job")
            for status in ("SUCCESS", "FAILURE", "CANCELED")} == {
        (job, status): 0 for job in ("ok_job", "failing_job") for status in ("SUCCESS", "FAILURE", "CANCELED")}
    execute(dagster, "ok_job")
    execute(dagster, "failing_job")
    after = scrape(collector)
    assert finished(after, "ok_job", "SUCCESS") == 1
    assert finished(after, "failing_job", "FAILURE") == 1
    assert after[("dagster_run_duration_seconds_count", (("job_name", "ok_job"),))] == 1
    # Counted once, however often scraped.
    again = scrape(collector)
    assert finished(again, "ok_job", "SUCCESS") == 1


def test_a_run_updated_after_its_window_is_not_counted_again(dagster, monkeypatch):
    """Each poll asks only for runs updated since the last one (less a look-back) and
    forgets the runs older than that: a finished run whose row changes later (a tag) comes
    back in a poll, and must not be counted twice."""
    import dagster_exporter
    monkeypatch.setattr(dagster_exporter, "LOOK_BACK_SECONDS", 0)
    collector = dagster_exporter.DagsterCollector(dagster["url"], [])
    scrape(collector)
    first = execute(dagster, "ok_job")
    assert finished(scrape(collector), "ok_job", "SUCCESS") == 1
    time.sleep(1.1)
    execute(dagster, "ok_job")
    assert finished(scrape(collector), "ok_job", "SUCCESS") == 2
    assert first not in collector.finished.seen  # older than the window: forgotten
    script = (f"import dagster as dg; dg.DagsterInstance.get().add_run_tags({first!r}, {{'touched': 'later'}})")
    subprocess.run([sys.executable, "-c", script], env=dagster["env"], check=True, capture_output=True)
    assert finished(scrape(collector), "ok_job", "SUCCESS") == 2


def test_state_of_the_platform(dagster):
    from dagster_exporter import DagsterCollector
    samples = scrape(DagsterCollector(dagster["url"], []))
    assert samples[("dagster_location_loaded", (("location", "defs.py"),))] == 1
    assert samples[("dagster_run_queue_depth", ())] == 0
    assert samples[("dagster_runs", (("status", "STARTED"),))] == 0
    # dagster dev runs the daemon: its heartbeats are recent.
    ages = {dict(k[1])["daemon"]: v for k, v in samples.items() if k[0] == "dagster_daemon_heartbeat_age_seconds"}
    assert "SCHEDULER" in ages and all(age < 120 for age in ages.values()), ages
    assert samples[("dagster_exporter_scrape_errors_total", (("part", "state"),))] == 0


def test_code_server_reachability_from_a_file_read_at_each_scrape(dagster, tmp_path):
    from dagster_exporter import DagsterCollector
    servers = tmp_path / "code-servers.json"
    collector = DagsterCollector(dagster["url"], servers)
    assert scrape(collector)[("dagster_exporter_scrape_errors_total", (("part", "code_servers"),))] == 1
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port, closed_port = listening.getsockname()[1], free_port()
        servers.write_text(json.dumps([{"name": "up", "address": "127.0.0.1", "port": open_port},
                                       {"name": "down", "address": "127.0.0.1", "port": closed_port}]))
        samples = scrape(collector)
    assert samples[("dagster_code_server_reachable", (("location", "up"),))] == 1
    assert samples[("dagster_code_server_reachable", (("location", "down"),))] == 0
    servers.write_text(json.dumps([{"name": "up", "address": "127.0.0.1", "port": open_port}]))
    assert ("dagster_code_server_reachable", (("location", "down"),)) not in scrape(collector)


def test_a_webserver_that_is_down_is_reported_not_hidden():
    from dagster_exporter import DagsterCollector
    collector = DagsterCollector(f"http://127.0.0.1:{free_port()}/graphql", [], timeout=2)
    samples = scrape(collector)
    assert samples[("dagster_up", ())] == 0
    assert samples[("dagster_exporter_scrape_errors_total", (("part", "state"),))] == 1
