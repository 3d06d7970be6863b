"""Metrics: dagster-exporter on the control host and the node exporter, behind their firewall."""

import re
import socket
import time

from dagster_platform import record

EXPORTER, NODE = 9815, 9100
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def scrape(host, port: int) -> dict:
    """The samples of one scrape from the host itself: {(name, frozenset(labels)): value}."""
    text = host.check_output(
        f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\"")
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: dict, name: str, default=0.0, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), default)


def test_exporter_counts_known_runs(web, host):
    before = scrape(host, EXPORTER)
    assert value(before, "dagster_up") == 1
    # Every loaded job's series exist before its runs finish (from 0 for a job never run).
    assert all(value(before, "dagster_runs_finished_total", default=None, job_name="gate_drill_job", status=status)
               is not None for status in ("SUCCESS", "FAILURE", "CANCELED")), before
    succeeded = web.launch("hello", "hello_job")
    failed = web.launch("platform_alerts", "gate_drill_job", run_config={
        "ops": {"wait_for_gate": {"config": {"gate_file": "/nonexistent/gate", "timeout_seconds": 1.0}}}})
    assert (web.wait_run(succeeded), web.wait_run(failed)) == ("SUCCESS", "FAILURE")
    after = scrape(host, EXPORTER)
    for job, status in (("hello_job", "SUCCESS"), ("gate_drill_job", "FAILURE")):
        labels = {"job_name": job, "status": status}
        assert value(after, "dagster_runs_finished_total", **labels) == value(before, "dagster_runs_finished_total", **labels) + 1
    assert value(after, "dagster_run_duration_seconds_count", job_name="hello_job") >= 1
    assert value(after, "dagster_run_queue_limit") == 10
    assert value(after, "dagster_run_queue_depth", default=None) is not None
    ages = {dict(labels)["daemon"]: v for (name, labels), v in after.items() if name == "dagster_daemon_heartbeat_age_seconds"}
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(ages) and max(ages.values()) < 120, ages
    loaded = {dict(labels)["location"]: v for (name, labels), v in after.items() if name == "dagster_location_loaded"}
    assert set(loaded) == set(web.wait_loaded()) and set(loaded.values()) == {1.0}, loaded
    assert value(after, "dagster_exporter_scrape_errors_total", part="state") == 0
    record("exporter_scrape_seconds_10_locations", round(value(after, "dagster_exporter_scrape_duration_seconds"), 3))
    record("exporter_example_scrape", sorted(f"{n}{{{','.join(f'{k}={v}' for k, v in sorted(ls))}}} {v}"
                                             for (n, ls), v in after.items() if n.startswith("dagster_"))[:60])


def test_a_stopped_code_server_shows_in_the_next_scrape(web, host):
    assert value(scrape(host, EXPORTER), "dagster_code_server_reachable", location="hello") == 1
    host.check_output("systemctl stop dagster-code@hello.service")
    try:
        assert value(scrape(host, EXPORTER), "dagster_code_server_reachable", location="hello") == 0
        assert value(scrape(host, EXPORTER), "dagster_code_server_reachable", location="etl") == 1
    finally:
        host.check_output("systemctl start dagster-code@hello.service")
    deadline = time.monotonic() + 120
    while value(scrape(host, EXPORTER), "dagster_code_server_reachable", location="hello") != 1:
        assert time.monotonic() < deadline, "hello's code server did not come back"
        time.sleep(1)
    assert web.wait_loaded()["hello"]["loadStatus"] == "LOADED"


def test_node_exporter_serves_the_host_s_metrics(host):
    # Not the root file system's: the lab's hosts boot from an overlay, which the node
    # exporter leaves out by default.
    samples = scrape(host, NODE)
    assert value(samples, "node_memory_MemTotal_bytes") > 0
    assert any(name == "node_load1" for name, _ in samples)


def test_metrics_ports_admit_the_scrapers_only(host):
    """The lab lists no scrapers: the controller, on the hosts' bridge, is reset, though
    both exporters listen on every address."""
    listening = host.check_output("ss -Hltn")
    assert re.search(rf"0\.0\.0\.0:{EXPORTER}\b", listening) and re.search(rf"(\*|\[::\]|0\.0\.0\.0):{NODE}\b", listening), listening
    address = host.ansible.get_variables()["ansible_host"]
    refused = {}
    for port in (EXPORTER, NODE):
        try:
            socket.create_connection((address, port), timeout=5).close()
            refused[port] = "accepted"
        except ConnectionRefusedError as error:
            refused[port] = f"refused: {error}"
    assert all(v.startswith("refused") for v in refused.values()), refused
    rules = host.check_output("nft list table inet dagster_metrics")
    assert f"{EXPORTER}" in rules and f"{NODE}" in rules and "reject with tcp reset" in rules


def test_the_last_dump_is_published_for_the_node_exporter(host):
    started = time.time()
    host.check_output("systemctl start pg-dump-dagster.service")
    samples = scrape(host, NODE)
    assert value(samples, "dagster_backup_last_attempt_ok") == 1
    assert value(samples, "dagster_backup_last_success_timestamp_seconds") >= int(started) - 1
    assert value(samples, "dagster_backup_max_age_seconds") == 36 * 3600
