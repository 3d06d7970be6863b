"""Day-2 operations: the status playbook, backups and the restore drill."""

import json
import time

from dagster_platform import record, run_playbook

BACKUP_DIR = "/var/backups/dagster"
# Exact row counts of every table of a database, one "table count" line each.
ROW_COUNTS = """SELECT table_name, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I',
  table_schema, table_name), false, true, '')))[1]::text FROM information_schema.tables
  WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE' ORDER BY 1"""
# The rows that belong to the runs created up to a moment (the daemon keeps writing
# heartbeats and ticks, which a restore rightly takes back to the dump's time).
RUN_ROWS = """SELECT (SELECT count(*) FROM runs WHERE create_timestamp <= '{t}'),
  (SELECT count(*) FROM event_logs WHERE run_id IN (SELECT run_id FROM runs WHERE create_timestamp <= '{t}')),
  (SELECT count(*) FROM run_tags WHERE run_id IN (SELECT run_id FROM runs WHERE create_timestamp <= '{t}'))"""


def psql(host, database: str, query: str) -> str:
    return host.check_output(f"runuser -u postgres -- psql -XAt -F ' ' -d {database} -c \"{query}\"")


def status(*extra: str):
    """The status playbook's run, with its output as one line of words (however the
    callback wraps long lines), and its duration."""
    started = time.monotonic()
    result = run_playbook("playbooks/status.yml", *extra)
    result.stdout = " ".join(result.stdout.split())
    return result, time.monotonic() - started


def test_status_reports_health_and_names_what_is_down(host, web):
    result, seconds = status()
    assert result.returncode == 0, result.stdout[-3000:]
    for line in ["unit dagster-webserver.service: active/running", "unit dagster-code@hello.service: active/running",
                 "port 3000 (webserver): listening on 127.0.0.1", "location hello: LOADED",
                 "daemon QUEUED_RUN_COORDINATOR: heartbeat", "runs: 0 queued", "database dagster:",
                 "disk compute logs", "unit dagster-exporter.service: active/running",
                 "port 9100 (node exporter): listening on", "unit nftables-dagster-metrics.service: active/exited"]:
        assert line in result.stdout, (line, result.stdout[-4000:])
    assert "changed=0" in result.stdout and "PROBLEM" not in result.stdout, result.stdout[-4000:]
    record("status_seconds", round(seconds, 1))

    host.check_output("systemctl stop dagster-code@etl.service")
    try:
        result, _ = status()
        assert result.returncode != 0, result.stdout[-4000:]
        assert "PROBLEM: unit dagster-code@etl.service: inactive/dead" in result.stdout, result.stdout[-4000:]
        assert "PROBLEM: port 4002 (code server etl): nothing listens" in result.stdout, result.stdout[-4000:]
        # The fail message names what is wrong, and nothing else.
        failure = result.stdout.split("fatal:", 1)[-1]
        assert f"{host.backend.get_hostname()}: unit dagster-code@etl.service: inactive/dead" in failure, failure
        assert "location hello: LOADED" in result.stdout
    finally:
        host.check_output("systemctl start dagster-code@etl.service")
    # The webserver may still show the stopped server's location as loaded: wait for the
    # new server's port first, then for the location.
    deadline = time.monotonic() + 120
    while ":4002 " not in host.check_output("ss -Hltn"):
        assert time.monotonic() < deadline, "etl's code server did not listen again in 120 s"
        time.sleep(0.5)
    assert web.wait_loaded()["etl"]["loadStatus"] == "LOADED"
    result, _ = status()
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_failed_dump_keeps_the_last_good_one_and_shows_in_status(host):
    host.check_output("systemctl start pg-dump-dagster.service")
    good = json.loads(host.file(f"{BACKUP_DIR}/status.json").content_string)
    assert good["ok"] and good["last_success"] == good["last_attempt"]

    failed = host.run(f"runuser -u postgres -- /usr/local/sbin/dagster-backup {BACKUP_DIR} 7 dagster no_such_db")
    assert failed.rc == 1, failed.stderr
    after = json.loads(host.file(f"{BACKUP_DIR}/status.json").content_string)
    host.check_output(f"rm -rf {BACKUP_DIR}/no_such_db")
    assert not after["ok"] and "no_such_db" in after["error"]
    assert after["last_success"] == good["last_success"] and after["databases"] == good["databases"]
    result, _ = status()
    assert result.returncode != 0, result.stdout[-4000:]
    assert "PROBLEM: backup: the last attempt" in result.stdout, result.stdout[-4000:]

    # The next good run clears it, and keeps only the newest dumps of each database.
    host.check_output(f"runuser -u postgres -- /usr/local/sbin/dagster-backup {BACKUP_DIR} 1 dagster warehouse")
    for database in ("dagster", "warehouse"):
        assert len(host.file(f"{BACKUP_DIR}/{database}").listdir()) == 1, database
    result, _ = status()
    assert "PROBLEM" not in result.stdout, result.stdout[-4000:]


def test_restore_drill_brings_back_every_run_and_row(host, web):
    runs = [web.launch("hello", "hello_job") for _ in range(2)]
    assert [web.wait_run(run) for run in runs] == ["SUCCESS", "SUCCESS"]
    moment = psql(host, "dagster", "SELECT max(create_timestamp) FROM runs")
    before = {"dagster": psql(host, "dagster", RUN_ROWS.format(t=moment)),
              "warehouse": psql(host, "warehouse", ROW_COUNTS)}
    assert int(before["dagster"].split()[0]) >= 2 and int(before["dagster"].split()[1]) > 0

    host.check_output("systemctl start pg-dump-dagster.service")
    dumped = json.loads(host.file(f"{BACKUP_DIR}/status.json").content_string)
    record("backup_seconds", dumped["seconds"])
    record("backup_bytes", {name: d["bytes"] for name, d in dumped["databases"].items()})

    # The disaster: both databases gone.
    host.check_output("runuser -u postgres -- dropdb --force dagster")
    host.check_output("runuser -u postgres -- dropdb --force warehouse")
    broken, _ = status()
    assert broken.returncode != 0 and "PROBLEM: database dagster: missing" in broken.stdout, broken.stdout[-4000:]

    started = time.monotonic()
    result = run_playbook("playbooks/restore.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("restore_seconds", round(time.monotonic() - started, 1))
    assert f"Restoring the dumps of {dumped['stamp']}" in result.stdout

    assert psql(host, "dagster", RUN_ROWS.format(t=moment)) == before["dagster"]
    assert psql(host, "warehouse", ROW_COUNTS) == before["warehouse"]
    assert not psql(host, "postgres", "SELECT datname FROM pg_database WHERE datname LIKE '%__restoring'")
    assert psql(host, "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'warehouse'") == "warehouse"
    entries = web.wait_loaded()
    assert all(e["loadStatus"] == "LOADED" for e in entries.values()), entries
    assert [web.run_status(run) for run in runs] == ["SUCCESS", "SUCCESS"]
    assert web.wait_run(web.launch("hello", "hello_job")) == "SUCCESS"
    healthy, _ = status()
    assert healthy.returncode == 0, healthy.stdout[-3000:]


def test_restore_refuses_an_unknown_stamp_before_stopping_anything(host):
    pids = host.check_output("systemctl show -P MainPID dagster-webserver.service dagster-code@hello.service")
    result = run_playbook("playbooks/restore.yml", "-e", "dagster_postgresql_restore_stamp=20000101T000000Z")
    assert result.returncode != 0
    said = " ".join(result.stdout.split())  # the message as one line, however the callback wraps it
    assert 'No dump of every database has the stamp "20000101T000000Z"' in said
    assert "set dagster_postgresql_restore_stamp to one of" in said
    assert host.check_output("systemctl show -P MainPID dagster-webserver.service dagster-code@hello.service") == pids


def test_run_retention_deletes_only_old_finished_runs(host, web):
    old = [web.launch("hello", "hello_job") for _ in range(3)]
    fresh = web.launch("hello", "hello_job")
    assert {web.wait_run(run) for run in old + [fresh]} == {"SUCCESS"}
    in_flight, gate = web.launch_gated()
    ids = ", ".join(f"'{run}'" for run in old + [in_flight])
    # 40 days ago, as far as the database knows; the lab keeps runs 30 days.
    psql(host, "dagster", f"UPDATE runs SET update_timestamp = (now() AT TIME ZONE 'utc') - interval '40 days' "
                          f"WHERE run_id IN ({ids})")
    assert int(psql(host, "dagster", f"SELECT count(*) FROM event_logs WHERE run_id IN ({ids})")) > 0
    assert all(host.file(f"/var/lib/dagster/compute_logs/{run}").is_directory for run in old)

    host.check_output("systemctl start dagster-run-retention.service")
    summary = json.loads(host.file("/var/lib/dagster/run_retention.json").content_string)
    assert summary["deleted"] == len(old), summary
    record("run_retention", summary)

    old_ids = ", ".join(f"'{run}'" for run in old)
    assert psql(host, "dagster", f"SELECT count(*) FROM runs WHERE run_id IN ({old_ids})") == "0"
    assert psql(host, "dagster", f"SELECT count(*) FROM event_logs WHERE run_id IN ({old_ids})") == "0"
    assert not any(host.file(f"/var/lib/dagster/compute_logs/{run}").exists for run in old)
    assert web.gql("query($id: ID!) { runOrError(runId: $id) { __typename } }",
                   {"id": old[0]})["runOrError"]["__typename"] == "RunNotFoundError"
    # The recent run and the one still running, though it looks old, are kept.
    assert web.run_status(fresh) == "SUCCESS" and web.run_messages(fresh)
    assert host.file(f"/var/lib/dagster/compute_logs/{fresh}").is_directory
    assert web.run_status(in_flight) == "STARTED"
    host.check_output(f"touch {gate}")
    assert web.wait_run(in_flight) == "SUCCESS"
    host.check_output(f"rm -f {gate}")
    assert "retention: last pass" in status()[0].stdout


def test_compute_logs_left_on_a_host_age_out(host):
    """What runs left in compute_logs (on a code host, the control host deletes only its
    own) goes after dagster_run_retention_days without a write; recent logs stay."""
    base = "/var/lib/dagster/compute_logs"
    host.check_output(f"install -d -o dagster -g dagster {base}/old-run/compute_logs {base}/new-run/compute_logs")
    host.check_output(f"touch {base}/new-run/compute_logs/step.out && touch -d '40 days ago' {base}/old-run/compute_logs/step.out")
    host.check_output("systemd-tmpfiles --clean /etc/tmpfiles.d/dagster-compute-logs.conf")
    try:
        assert not host.file(f"{base}/old-run/compute_logs/step.out").exists
        assert host.file(f"{base}/new-run/compute_logs/step.out").exists
    finally:
        host.check_output(f"rm -rf {base}/old-run {base}/new-run")
