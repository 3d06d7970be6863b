"""Four hosts: each serves what its groups say, and the network is closed to everyone else."""

import base64
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
import yaml
from dagster_platform import ARTIFACTS, LAB_SECRETS, PROJECT, reboot, recap, record, run_playbook, run_site

# `host` is the control host; the others come from their groups.
testinfra_hosts = ["ansible://dagster_control"]
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")

# A PostgreSQL login's first answer: "R" (authenticate) or "E" (refused, and why).
# With "tls" it asks for TLS first and verifies the server against the CA file given.
PG_PROBE = r"""
import socket, ssl, struct, sys
host, mode = sys.argv[1], sys.argv[2]
conn = socket.create_connection((host, 5432), timeout=5)
version = "plain"
if mode == "tls":
    conn.sendall(struct.pack("!ii", 8, 80877103))
    assert conn.recv(1) == b"S", "the server offers no TLS"
    if len(sys.argv) > 3:
        context = ssl.create_default_context(cafile=sys.argv[3])
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = context.wrap_socket(conn, server_hostname=host)
    version = conn.version()
params = b"user\x00dagster\x00database\x00dagster\x00\x00"
conn.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
kind = conn.recv(1).decode()
print(kind, version, conn.recv(4096)[4:].replace(b"\x00", b" ").decode(errors="replace"))
"""
TCP_PROBE = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print("error", error)
"""


def hosts(group):
    return testinfra.get_hosts([f"ansible://{group}"], ansible_inventory=INVENTORY)


def address(h):
    return h.ansible.get_variables()["ansible_host"]


def name(h):
    return h.ansible.get_variables()["inventory_hostname"]


@pytest.fixture(scope="module")
def db():
    return hosts("dagster_db")[0]


@pytest.fixture(scope="module")
def code1():
    return hosts("dagster_code")[0]


@pytest.fixture(scope="module")
def code2():
    return hosts("dagster_code")[1]


@pytest.fixture(scope="module")
def outsider():
    return hosts("outsiders")[0]


def test_each_host_runs_its_units(host, db, code1, code2):
    assert db.service("postgresql").is_running
    for unit in ("dagster-webserver", "dagster-daemon", "nginx"):
        assert host.service(unit).is_running and host.service(unit).is_enabled, unit
    assert not host.file("/etc/systemd/system/dagster-code@hello.service.d").exists
    for h, locations in ((code1, ["hello", "assets_quickstart", "etl"]), (code2, ["isolation_remote"])):
        for location in locations:
            unit = h.service(f"dagster-code@{location}")
            assert unit.is_running and unit.is_enabled, (name(h), location)
        assert not h.service("dagster-webserver").is_running
        assert not h.service("postgresql").is_running
        assert h.service("nftables-dagster").is_enabled
    assert not db.service("dagster-webserver").is_running


def test_code_hosts_hold_no_owner_login(code1, code2):
    """Code servers and their runs log in as dagster_runs; the owner's password stays on the control host."""
    owner_password = (LAB_SECRETS / "dagster_db_password").read_text().strip()
    for h, location in ((code1, "hello"), (code2, "isolation_remote")):
        assert not h.file("/etc/dagster/dagster.env").exists, name(h)
        assert 'DAGSTER_PG_USERNAME="dagster_runs"' in h.file("/etc/dagster/dagster-runs.env").content_string
        assert h.run("grep -rqF -- %s /etc/dagster /var/lib/dagster", owner_password).rc == 1, name(h)
        pid = h.check_output(f"systemctl show -P MainPID dagster-code@{location}.service")
        assert h.check_output(f"ps -o user= -p {pid}") == f"dagster-{location}"


def test_code_servers_bind_their_private_address(code1, code2):
    for h, ports in ((code1, [4000, 4001, 4002]), (code2, [4000])):
        listening = h.check_output("ss -Hltn")
        for port in ports:
            # gRPC listens on an IPv6 socket: an IPv4 address shows as [::ffff:a.b.c.d].
            assert re.search(rf"\s(\[::ffff:)?{re.escape(address(h))}\]?:{port}\s", listening), (name(h), port, listening)
            assert not re.search(rf"\s(0\.0\.0\.0|\*|\[::\]):{port}\s", listening), (name(h), port, listening)


def test_database_admits_exactly_the_platform_hosts_over_tls(host, db, code1, code2, outsider):
    observed = {}
    for h in (host, code1, code2):
        plain = h.check_output("python3 -c %s %s plain", PG_PROBE, address(db))
        verified = h.check_output("python3 -c %s %s tls /etc/dagster/db-ca.crt", PG_PROBE, address(db))
        observed[name(h)] = {"plain": plain, "tls": verified}
        # Without TLS pg_hba refuses even a platform host; with it (the server proven by
        # the platform's CA, for the address the host uses) it asks for the password.
        assert plain.startswith("E") and "pg_hba.conf rejects connection" in plain and "no encryption" in plain, plain
        assert verified.startswith(("R TLSv1.2", "R TLSv1.3")), (name(h), verified)
    for mode in ("plain", "tls"):
        refused = outsider.check_output("python3 -c %s %s %s", PG_PROBE, address(db), mode)
        observed[f"{name(outsider)} {mode}"] = refused
        assert refused.startswith("E") and "pg_hba.conf rejects connection" in refused, refused
        assert f'"{address(outsider)}"' in refused
    record("multinode_postgresql_probe", observed)


def test_every_remote_database_session_is_encrypted(db):
    # Dagster opens sessions per query, so the remote ones are sampled until some were
    # seen (the daemon polls every few seconds); each sample must be all encrypted.
    query = ("runuser -u postgres -- psql -At -F ' ' -c \"SELECT count(*) FILTER (WHERE s.ssl), count(*) "
             "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.client_addr IS NOT NULL "
             "AND a.client_addr <> '127.0.0.1' AND a.datname IN ('dagster', 'warehouse')\"")
    samples, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline and sum(remote for _, remote in samples) < 3:
        samples.append(tuple(map(int, db.check_output(query).split())))
    record("multinode_remote_database_sessions", {"samples": len(samples),
                                                  "encrypted": sum(e for e, _ in samples),
                                                  "all": sum(r for _, r in samples)})
    assert sum(remote for _, remote in samples) >= 3, samples
    assert all(encrypted == remote for encrypted, remote in samples), samples


def test_a_server_name_the_certificate_lacks_is_refused(host, db):
    """verify-full: the certificate names the addresses the platform uses, and no other."""
    wrong = host.run("python3 -c %s %s tls /etc/dagster/db-ca.crt", PG_PROBE.replace(
        "server_hostname=host", "server_hostname='db.invalid'"), address(db))
    assert wrong.rc != 0 and "certificate verify failed" in wrong.stderr and "db.invalid" in wrong.stderr, wrong.stderr


def test_grpc_ports_admit_the_control_host_only(host, code1, code2, outsider):
    observed = {}
    for port in (4000, 4001):
        assert host.check_output("python3 -c %s %s %s", TCP_PROBE, address(code1), str(port)) == "open"
        for other in (code2, outsider):
            result = other.check_output("python3 -c %s %s %s", TCP_PROBE, address(code1), str(port))
            observed[f"{name(other)} -> {name(code1)}:{port}"] = result
            assert result == "refused", (name(other), port, result)
    result = outsider.check_output("python3 -c %s %s %s", TCP_PROBE, address(code2), "4000")
    observed[f"{name(outsider)} -> {name(code2)}:4000"] = result
    assert result == "refused"
    record("multinode_grpc_probe", observed)


def test_metrics_ports_admit_the_scraper_only(host, db, code1, code2, outsider):
    """dagster_metrics_scrapers lists the control host: it scrapes every host; the outsider is reset.
    (The control host reaches its own exporter over loopback, always admitted: its 9815 is
    checked from the outsider only.)"""
    observed = {}
    for target, port in ((db, "9100"), (code1, "9100"), (code2, "9100"), (host, "9815")):
        scraped = host.run("python3 -c %s %s %s", TCP_PROBE, address(target), port)
        refused = outsider.run("python3 -c %s %s %s", TCP_PROBE, address(target), port)
        observed[f"{name(target)}:{port}"] = {"control": scraped.stdout.strip(), "outsider": refused.stdout.strip()}
        assert scraped.stdout.startswith("open"), (name(target), port, scraped.stdout, scraped.stderr)
        assert refused.stdout.startswith("refused"), (name(target), port, refused.stdout, refused.stderr)
    record("multinode_metrics_ports", observed)
    metrics = host.check_output("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                                "'http://127.0.0.1:9815/metrics').read().decode())\"")
    for location in ("hello", "assets_quickstart", "etl", "isolation_remote"):
        assert f'dagster_code_server_reachable{{location="{location}"}} 1.0' in metrics, location


PROMETHEUS_API = r"""
import json, sys, urllib.request
print(json.dumps(json.loads(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/" + sys.argv[1]).read())["data"]))
"""


def prometheus(h, path: str):
    return json.loads(h.check_output("python3 -c %s %s", PROMETHEUS_API, path))


def test_prometheus_scrapes_every_host_and_its_rules_pass_their_tests(host):
    deadline = time.monotonic() + 120
    while True:
        targets = prometheus(host, "targets")["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in targets}
        if len(health) == 5 and set(health.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, health
        time.sleep(2)
    rules = {r["name"] for g in prometheus(host, "rules")["groups"] for r in g["rules"]}
    assert {"DagsterDaemonHeartbeatStale", "DagsterLocationNotLoaded", "DagsterCodeServerUnreachable",
            "DagsterRunFailureRatio", "DagsterRunQueueStuck", "DagsterBackupTooOld", "DagsterBackupFailed",
            "DiskAlmostFull", "DagsterExporterDown"} <= rules
    tests = host.run("mktemp /tmp/alert-rules-XXXXXX.yml").stdout.strip()
    try:
        content = base64.b64encode((Path(__file__).parent / "alert_rules_test.yml").read_bytes()).decode()
        host.check_output(f"echo {content} | base64 -d > {tests}")
        result = host.run(f"promtool test rules {tests}")
        assert result.rc == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    finally:
        host.run(f"rm -f {tests}")


def test_a_stopped_code_server_fires_its_alert(host, code2):
    """The fault, its metric in the next scrape, the alert pending then firing (for: 1m), then resolved."""
    def alert_state():
        for alert in prometheus(host, "alerts")["alerts"]:
            if alert["labels"]["alertname"] == "DagsterCodeServerUnreachable" and \
                    alert["labels"].get("location") == "isolation_remote":
                return alert["state"]
        return None

    assert alert_state() is None
    stopped_at = time.monotonic()
    code2.check_output("systemctl stop dagster-code@isolation_remote.service")
    seen = {}
    try:
        while "firing" not in seen:
            state = alert_state()
            if state and state not in seen:
                seen[state] = round(time.monotonic() - stopped_at, 1)
            assert time.monotonic() - stopped_at < 240, seen
            time.sleep(2)
    finally:
        code2.check_output("systemctl start dagster-code@isolation_remote.service")
    record("alert_code_server_unreachable_seconds", seen)
    assert seen["pending"] < seen["firing"]
    deadline = time.monotonic() + 180
    while alert_state() is not None:
        assert time.monotonic() < deadline, "the alert did not resolve"
        time.sleep(2)


@pytest.mark.parametrize("action", ["enable --now", "restart", "reload", "stop"])
def test_firewalls_survive_the_distribution_s_nftables_service(host, code1, outsider, action):
    # Debian's nftables.service flushes the whole ruleset on each of these.
    code1.run_test(f"systemctl {action} nftables.service")
    for table, port in (("dagster_code", "4000"), ("dagster_metrics", "9100")):
        assert code1.run(f"nft list table inet {table}").rc == 0, (action, table)
        assert outsider.check_output("python3 -c %s %s %s", TCP_PROBE, address(code1), port) == "refused", (action, port)
        assert host.check_output("python3 -c %s %s %s", TCP_PROBE, address(code1), port) == "open", (action, port)


def test_every_location_loaded(web):
    entries = web.wait_loaded()
    assert set(entries) == {"hello", "assets_quickstart", "etl", "isolation_remote", "file_example",
                            "module_example", "isolation"}
    for location, entry in entries.items():
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", (location, entry)


@pytest.mark.parametrize("location,job", [
    ("hello", "hello_job"), ("assets_quickstart", "orders_job"), ("etl", "etl_job"), ("file_example", "file_job"),
    ("module_example", "module_job"), ("isolation", "isolation_job"),
])
def test_job_reaches_success(web, location, job):
    assert web.wait_run(web.launch(location, job)) == "SUCCESS", location


def test_status_covers_every_host(host, db, code1, code2):
    """One command reports each host's own part, with the database and backups on the
    database host and the locations' load status from the control host."""
    result = run_playbook("playbooks/status.yml")
    said = " ".join(result.stdout.split())
    assert result.returncode == 0, said[-4000:]
    assert "PROBLEM" not in said
    assert re.search(rf"ok: \[{name(db)}\] => msg: - 'unit postgresql@\d+-main.service: active/running", said), said[-4000:]
    for h in (code1, code2):
        assert re.search(rf"ok: \[{name(h)}\] => msg: - 'unit dagster-code@\w+.service: active/running", said), name(h)
    assert "location hello: LOADED" in said and "database dagster:" in said
    assert "unit dagster-webserver-read-only.service: active/running" in said


def test_every_host_rebooted_at_once_comes_back(web, host, db, code1, code2, outsider):
    booted = reboot(*(name(h) for h in (db, host, code1, code2)))
    while True:
        try:
            entries = web.locations()
            if entries and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                               for e in entries.values()):
                break
        except (OSError, AssertionError):  # nginx or the webserver still starting
            pass
        assert time.monotonic() - booted < 180, "the locations were not loaded 180 s after the hosts booted"
        time.sleep(1)
    record("multinode_reboot_to_locations_loaded_seconds", round(time.monotonic() - booted, 1))
    # Code servers on other hosts than the daemon's, and their firewall, back from the boot.
    assert outsider.check_output("python3 -c %s %s %s", TCP_PROBE, address(code1), "4000") == "refused"
    assert web.wait_run(web.launch("isolation_remote", "isolation_job")) == "SUCCESS"


def materialized_by(web, run_id):
    data = web.gql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run { assetMaterializations {
             assetKey { path } metadataEntries { label ... on TextMetadataEntry { text } } } } } }""",
        {"id": run_id})
    entries = data["runOrError"]["assetMaterializations"][0]["metadataEntries"]
    return {e["label"]: e.get("text") for e in entries}


def test_runs_execute_on_the_host_that_serves_their_location(web, host, code2):
    run_id = web.launch("isolation_remote", "isolation_job")
    assert web.wait_run(run_id) == "SUCCESS"
    remote = materialized_by(web, run_id)
    assert remote["hostname"] == code2.check_output("hostname")
    assert remote["sys_executable"] == "/opt/dagster/locations/isolation_remote/venv/bin/python"
    run_id = web.launch("isolation", "isolation_job")
    assert web.wait_run(run_id) == "SUCCESS"
    local = materialized_by(web, run_id)
    assert local["hostname"] == host.check_output("hostname")
    record("multinode_isolation_hostnames", {"isolation_remote": remote["hostname"], "isolation": local["hostname"]})


def test_ui_in_headless_chromium(web):
    """The UI through nginx, logged in, in Debian's Chromium: screenshots kept as artifacts."""
    script = Path(__file__).resolve().parents[1] / "browser" / "screenshot.mjs"
    assert (script.parent / "node_modules" / "playwright-core").is_dir(), "make test runs npm ci there"
    password = (LAB_SECRETS / "ui_password").read_text().strip()
    ARTIFACTS.mkdir(exist_ok=True)
    result = subprocess.run(
        ["node", str(script), web.url, "admin", password, str(ARTIFACTS),
         "locations:hello,assets_quickstart,isolation_remote,file_example,module_example,isolation",
         "runs:isolation_job,hello_job,Success"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    texts, problems = report["texts"], report["problems"]
    record("multinode_ui_problems", problems)
    for location in ("hello", "assets_quickstart", "isolation_remote", "file_example", "module_example"):
        assert location in texts["locations"], (problems["locations"], texts["locations"][:1500])
    assert texts["locations"].count("Loaded") >= 7, (problems["locations"], texts["locations"][:1500])
    assert "hello_job" in texts["runs"] and "Success" in texts["runs"], (problems["runs"], texts["runs"][:1500])
    for page in ("locations", "runs"):
        assert (ARTIFACTS / f"{page}.png").stat().st_size > 20_000
    record("multinode_screenshots", [str(ARTIFACTS / "locations.png"), str(ARTIFACTS / "runs.png")])


def main_pids(h, units):
    return {unit: h.check_output(f"systemctl show -P MainPID {unit}") for unit in units}


def test_check_on_a_fresh_host_says_what_it_would_do_and_does_none_of_it(host, outsider, tmp_path):
    """The whole platform (the all-in-one lab's settings) dry-run on a host that has none of
    it: every stage reports, nothing waits for a service that does not exist, nothing is written.
    (`host` orders it among the control host's tests, before the outsider joins below.)"""
    inventory = tmp_path / "all-in-one"
    inventory.mkdir()
    (inventory / "group_vars").symlink_to(PROJECT / "inventory" / "lab" / "group_vars")
    # lab_standins too: the lab's settings name the stand-ins' host (site.yml installs none).
    groups = ["dagster_db", "dagster_control", "dagster_code", "lab_standins"]
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "hosts": {name(outsider): {"ansible_host": address(outsider)}},
        "children": {g: {"hosts": {name(outsider): None}} for g in groups}}}))
    snapshot = "find /etc /opt /usr/local -xdev -printf '%p %s %T@\\n' | sort | sha256sum"
    before = outsider.check_output(snapshot)
    started = time.monotonic()
    result = run_playbook("site.yml", "--check", "--diff", inventory=str(inventory))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("check_on_a_fresh_host_seconds", round(time.monotonic() - started, 1))
    host = name(outsider)
    assert recap(result.stdout)[host]["changed"] > 0
    for says in ["The following NEW packages will be installed:\n  nginx ",  # apt's plan
                 "path: /etc/systemd/system/dagster-code@hello.service.d",
                 "TASK [dagster_control : Render workspace.yaml] ***", f"changed: [{host}] => (item=dagster-webserver.service)",
                 "TASK [dagster_postgresql : Install PostgreSQL and the driver Ansible uses for it] ***"]:
        assert says in result.stdout, says
    assert outsider.check_output(snapshot) == before
    assert not outsider.user("dagster").exists
    assert not outsider.package("postgresql").is_installed


def test_a_code_server_bound_to_loopback_on_a_code_host_is_refused(host, code1, tmp_path):
    """The control host could not reach it: the preflight says so before anything changes."""
    locations = yaml.safe_load((PROJECT / "inventory/lab-multinode/group_vars/all/locations.yml").read_text())
    locations["dagster_locations"].append({"name": "unreachable", "source": "code_locations/hello",
                                           "module": "hello.definitions", "host": name(code1), "port": 4010,
                                           "bind": "127.0.0.1"})
    extra = tmp_path / "locations.yml"
    extra.write_text(yaml.safe_dump(locations))
    before = code1.check_output("find /etc/dagster /opt/dagster /etc/systemd/system -printf '%p %s %T@\\n' | sort | sha256sum")
    result = run_site("-e", f"@{extra}")
    assert result.returncode != 0
    said = " ".join(result.stdout.split())
    assert (f'location "unreachable": bind 127.0.0.1 on {name(code1)} cannot be reached from the control host: '
            "bind the host's private address, or leave bind unset.") in said, result.stdout[-3000:]
    assert all(counts["changed"] == 0 for counts in recap(result.stdout).values())
    assert code1.check_output("find /etc/dagster /opt/dagster /etc/systemd/system -printf '%p %s %T@\\n' | sort | sha256sum") == before


def test_adding_a_code_host_is_inventory_only(host, db, code1, code2, outsider, web, tmp_path):
    """Last: the outsider joins dagster_code with a location of its own; nothing else
    restarts: the daemon and the webservers are reloaded to read the new workspace."""
    services = {
        host: ["dagster-webserver", "dagster-webserver-read-only", "dagster-daemon", "nginx"],
        db: ["postgresql@15-main"],
        code1: ["dagster-code@hello", "dagster-code@assets_quickstart", "dagster-code@etl"],
        code2: ["dagster-code@isolation_remote"],
    }
    before = {name(h): main_pids(h, units) for h, units in services.items()}
    joins = tmp_path / "code3.yml"
    joins.write_text(yaml.safe_dump({"dagster_code": {"hosts": {name(outsider): None}}}))
    locations = yaml.safe_load((PROJECT / "inventory/lab-multinode/group_vars/all/locations.yml").read_text())
    locations["dagster_locations"].append({"name": "isolation_code3", "source": "code_locations/isolation",
                                           "module": "isolation.definitions", "host": name(outsider),
                                           "port": 4000})
    extra = tmp_path / "locations.yml"
    extra.write_text(yaml.safe_dump(locations))
    # First a dry run limited to the fresh host: it says what it would do, and does none of it.
    result = run_site("-i", str(joins), "-e", f"@{extra}", "--limit", name(outsider), "--check", "--diff")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert recap(result.stdout)[name(outsider)]["changed"] > 0
    assert "path: /etc/systemd/system/dagster-code@isolation_code3.service.d" in result.stdout
    for path in ["/opt/dagster", "/etc/dagster", "/etc/systemd/system/dagster-code@.service"]:
        assert not outsider.file(path).exists, f"--check wrote {path}"
    assert not outsider.user("dagster").exists

    result = run_site("-i", str(joins), "-e", f"@{extra}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    assert outsider.service("dagster-code@isolation_code3").is_running
    run_id = web.launch("isolation_code3", "isolation_job")
    assert web.wait_run(run_id) == "SUCCESS"
    assert materialized_by(web, run_id)["hostname"] == outsider.check_output("hostname")
    assert {name(h): main_pids(h, units) for h, units in services.items()} == before
    workspace = host.check_output("sha1sum /etc/dagster/workspace.yaml").split()[0]
    for unit in services[host][:3]:
        assert host.file(f"/run/{unit}/workspace.sha1").content_string.strip() == workspace, f"{unit} did not read it"
