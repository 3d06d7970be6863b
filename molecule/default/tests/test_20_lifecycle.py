"""Adding a location is one inventory entry and a re-run; state: absent removes it."""

import time
from pathlib import Path

import yaml
from dagster_platform import PROJECT, recap, record, run_site

BASE = yaml.safe_load((PROJECT / "inventory/lab/group_vars/all/locations.yml").read_text())["dagster_locations"]
NEW = {"name": "hello_two", "source": "code_locations/hello", "module": "hello.definitions", "port": 4011}
KEEP = ["dagster-webserver.service", "dagster-daemon.service", "dagster-code@hello.service",
        "dagster-code@assets_quickstart.service"]


def main_pids(host) -> dict[str, str]:
    return {unit: host.check_output(f"systemctl show -P MainPID {unit}") for unit in KEEP}


def converge_with(tmp_path: Path, locations: list[dict]):
    extra = tmp_path / "locations.yml"
    extra.write_text(yaml.safe_dump({"dagster_locations": locations}))
    started = time.monotonic()
    result = run_site("-e", f"@{extra}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result, time.monotonic() - started


def test_add_then_remove_a_location(host, web, tmp_path):
    pids = main_pids(host)
    assert all(pid != "0" for pid in pids.values())

    result, seconds = converge_with(tmp_path, BASE + [NEW])
    record("add_location_converge_seconds", round(seconds, 1))
    unit = host.service("dagster-code@hello_two.service")
    assert unit.is_running and unit.is_enabled
    assert host.file("/opt/dagster/locations/hello_two/venv/bin/dagster").exists
    assert "hello_two" in host.file("/etc/dagster/workspace.yaml").content_string
    assert main_pids(host) == pids, "adding a location restarted something else"
    entries = web.wait_loaded()
    assert entries["hello_two"]["loadStatus"] == "LOADED"
    assert entries["hello_two"]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    assert web.wait_run(web.launch("hello_two", "hello_job")) == "SUCCESS"

    result, seconds = converge_with(tmp_path, BASE + [dict(NEW, state="absent")])
    record("remove_location_converge_seconds", round(seconds, 1))
    assert not host.service("dagster-code@hello_two.service").is_running
    assert not host.file("/etc/systemd/system/dagster-code@hello_two.service.d").exists
    assert not host.file("/etc/systemd/system/multi-user.target.wants/dagster-code@hello_two.service").exists
    assert not host.file("/opt/dagster/locations/hello_two").exists
    assert not host.file("/etc/dagster/locations/hello_two.env").exists
    assert "hello_two" not in host.file("/etc/dagster/workspace.yaml").content_string
    assert "hello_two" not in web.wait_loaded()
    assert main_pids(host) == pids, "removing a location restarted something else"

    # Back to the scenario's own inventory: nothing is left to change.
    result = run_site()
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(counters["changed"] == 0 for counters in recap(result.stdout).values()), result.stdout[-4000:]
