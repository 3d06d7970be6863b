"""Upgrading Dagster one minor release: history kept, schema migrated once after a dump,
new runs succeed, and the next converge changes nothing."""

import json
import threading
import time

import yaml
from dagster_platform import PROJECT, WORKSPACE_QUERY, recap, record, run_site

PREVIOUS, CURRENT = "1.12.0", "1.13.27"
SHIPPED = {
    "dagster_control_project": str(PROJECT / "roles/dagster_control/files/control-plane"),
    "dagster_locations": [{"name": "hello", "source": str(PROJECT / "code_locations/hello"),
                           "module": "hello.definitions", "port": 4000}],
}
HANDLER = "RUNNING HANDLER [dagster_control : {}]"


def psql(host, query: str) -> str:
    return host.check_output(f"runuser -u postgres -- psql -XAt -F ' ' -d dagster -c \"{query}\"")


def dagster_version(host, python: str) -> str:
    return host.check_output(f"{python} -c 'import dagster; print(dagster.__version__)'")


def server_version(web) -> str:
    with web.get("/server_info") as answer:
        return json.load(answer)["dagster_version"]


class Watch(threading.Thread):
    """Asks the UI every 0.5 s whether hello is loaded (what a launch needs) and keeps
    the longest stretch it was not."""

    def __init__(self, web):
        super().__init__(daemon=True)
        self.web, self.stop, self.longest, self.down_since = web, threading.Event(), 0.0, None

    def run(self):
        while not self.stop.is_set():
            try:
                entries = self.web.gql(WORKSPACE_QUERY, timeout=5)["workspaceOrError"]["locationEntries"]
                up = any(e["name"] == "hello" and e["loadStatus"] == "LOADED" for e in entries)
            except Exception:  # noqa: BLE001 - any failure to answer is downtime
                up = False
            now = time.monotonic()
            if up and self.down_since is not None:
                self.longest, self.down_since = max(self.longest, now - self.down_since), None
            elif not up and self.down_since is None:
                self.down_since = now
            time.sleep(0.5)


def test_upgrade_keeps_history_and_migrates_once(host, web, tmp_path):
    assert server_version(web) == PREVIOUS
    assert dagster_version(host, "/opt/dagster/locations/hello/venv/bin/python") == PREVIOUS
    schema_before = psql(host, "SELECT version_num FROM alembic_version")
    runs = [web.launch("hello", "hello_job") for _ in range(3)]
    assert [web.wait_run(run) for run in runs] == ["SUCCESS"] * 3
    # This test's runs only: hello_daily launches one of its own at 10:00 UTC.
    ids = ", ".join(f"'{run}'" for run in runs)
    history = psql(host, f"SELECT (SELECT count(*) FROM runs WHERE run_id IN ({ids})), (SELECT count(*) FROM event_logs WHERE run_id IN ({ids}))")
    dumped_before = json.loads(host.file("/var/backups/dagster/status.json").content_string)["stamp"]

    shipped = tmp_path / "shipped.yml"
    shipped.write_text(yaml.safe_dump(SHIPPED))
    watch = Watch(web)
    watch.start()
    started = time.monotonic()
    result = run_site("-e", f"@{shipped}")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    web.wait_loaded()
    watch.stop.set()
    watch.join()

    # One dump, then one migration, before the code play deployed the new hello.
    out = result.stdout
    dump, migrate = out.find(HANDLER.format("Dump the databases before the schema changes")), \
        out.find(HANDLER.format("Migrate the instance schema"))
    assert 0 < dump < migrate < out.find("PLAY [Code locations]"), out[-4000:]
    assert out.count(HANDLER.format("Migrate the instance schema")) == 1
    dumped = json.loads(host.file("/var/backups/dagster/status.json").content_string)
    assert dumped["ok"] and dumped["stamp"] > dumped_before

    assert server_version(web) == CURRENT
    assert dagster_version(host, "/opt/dagster/locations/hello/venv/bin/python") == CURRENT
    schema_after = psql(host, "SELECT version_num FROM alembic_version")
    # 1.12.0's storage schema is two alembic revisions behind 1.13's: the migration did work.
    assert (schema_before, schema_after) == ("7e2f3204cf8e", "29b539ebc72a")
    assert psql(host, f"SELECT (SELECT count(*) FROM runs WHERE run_id IN ({ids})), (SELECT count(*) FROM event_logs WHERE run_id IN ({ids}))") \
        == history
    assert [web.run_status(run) for run in runs] == ["SUCCESS"] * 3
    assert web.wait_run(web.launch("hello", "hello_job")) == "SUCCESS"
    record("upgrade", {"from": PREVIOUS, "to": CURRENT, "converge_seconds": round(seconds, 1),
                       "longest_unloaded_seconds": round(watch.longest, 1),
                       "schema": [schema_before, schema_after]})

    again = run_site("-e", f"@{shipped}")
    assert again.returncode == 0, again.stdout[-4000:]
    assert all(counters["changed"] == 0 for counters in recap(again.stdout).values()), again.stdout[-4000:]
