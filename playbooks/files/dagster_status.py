"""What one platform host is doing, as JSON on stdout: {"lines": [...], "problems": [...]}.

Run by playbooks/status.yml (ansible.builtin.script, as root, standard library only):

    dagster_status.py '{"units": [...], "ports": [...], "webserver": URL, "backup_dir": DIR,
                        "backup_max_age_hours": N, "databases": [...], "dagster_home": DIR,
                        "run_retention_file": FILE}'

Every key is optional; each present one adds its lines, and a problem for what is
unhealthy. Reads only: nothing on the host changes.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DAY = 86400
DISK_FULL_PERCENT = 90
HEARTBEAT_STALE_SECONDS = 120

STATUS_QUERY = """
query($dayAgo: Float!) {
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatTime } } }
  queued: runsOrError(filter: {statuses: [QUEUED]}) { ... on Runs { count } }
  started: runsOrError(filter: {statuses: [STARTED, STARTING, CANCELING]}) { ... on Runs { count } }
  failed: runsOrError(filter: {statuses: [FAILURE], updatedAfter: $dayAgo}) { ... on Runs { count } }
}
"""


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def problem(self, text: str) -> None:
        self.lines.append(f"PROBLEM: {text}")
        self.problems.append(text)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def expand(names: list[str]) -> list[str]:
    """Patterns (postgresql@*-main.service) become the loaded units they match."""
    out = []
    for name in names:
        if "*" not in name:
            out.append(name)
            continue
        listed = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", name],
                                capture_output=True, text=True, check=False).stdout
        matched = [row.split()[0] for row in listed.splitlines() if row.strip()]
        out.extend(matched or [name])  # none: reported as not installed
    return out


def units(report: Report, names: list[str]) -> None:
    names = expand(names)
    out = subprocess.run(["systemctl", "show", "-p", "Id,LoadState,ActiveState,SubState,NRestarts,MainPID", *names],
                         capture_output=True, text=True, check=False).stdout
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = props.get("Id", "?")
        state = f"{props.get('ActiveState')}/{props.get('SubState')}"
        extra = f", pid {props['MainPID']}" if props.get("MainPID", "0") != "0" else ""
        restarts = f", restarted {props['NRestarts']}x" if props.get("NRestarts", "0") not in ("0", "") else ""
        if props.get("LoadState") != "loaded":
            report.problem(f"unit {name}: {props.get('LoadState')} (not installed)")
        elif props.get("ActiveState") != "active":
            report.problem(f"unit {name}: {state}{restarts}; see journalctl -u {name}")
        else:
            report.line(f"unit {name}: {state}{extra}{restarts}")


def ports(report: Report, wanted: list[dict]) -> None:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=False).stdout
    listening: dict[int, list[str]] = {}
    for row in out.splitlines():
        fields = row.split()
        if len(fields) >= 4:
            address, _, port = fields[3].rpartition(":")
            if port.isdigit():
                listening.setdefault(int(port), []).append(address)
    for port in wanted:
        found = listening.get(int(port["port"]))
        if found:
            report.line(f"port {port['port']} ({port['what']}): listening on {', '.join(sorted(set(found)))}")
        else:
            report.problem(f"port {port['port']} ({port['what']}): nothing listens")


def webserver(report: Report, url: str) -> None:
    body = json.dumps({"query": STATUS_QUERY, "variables": {"dayAgo": time.time() - DAY}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            data = json.load(answer)["data"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.problem(f"webserver {url}: no answer ({error})")
        return
    for entry in data["workspaceOrError"].get("locationEntries", []):
        error = entry["locationOrLoadError"] or {}
        if entry["loadStatus"] == "LOADED" and error.get("__typename") == "RepositoryLocation":
            report.line(f"location {entry['name']}: LOADED")
        else:
            message = (error.get("message") or entry["loadStatus"]).strip().splitlines()[0][:300]
            report.problem(f"location {entry['name']}: {entry['loadStatus']}: {message}")
    now = time.time()
    for daemon in data["instance"]["daemonHealth"]["allDaemonStatuses"]:
        if not daemon["required"]:
            continue
        beat = daemon["lastHeartbeatTime"]
        text = f"daemon {daemon['daemonType']}: " + (f"heartbeat {age(now - beat)} ago" if beat else "no heartbeat")
        if daemon["healthy"] and beat and now - beat < HEARTBEAT_STALE_SECONDS:
            report.line(text)
        else:
            report.problem(text + " (unhealthy); see journalctl -u dagster-daemon")
    report.line(f"runs: {data['queued']['count']} queued, {data['started']['count']} in flight, "
                f"{data['failed']['count']} failed in the last 24 h")


def backups(report: Report, directory: str, max_age_hours: float) -> None:
    try:
        status = json.loads((Path(directory) / "status.json").read_text())
    except FileNotFoundError:
        report.line(f"backup: no dump yet in {directory} (pg-dump-dagster.timer makes the first)")
        return
    except (OSError, ValueError) as error:
        report.problem(f"backup: {directory}/status.json unreadable ({error})")
        return
    success = status.get("last_success")
    if success:
        when = datetime.datetime.fromisoformat(success).timestamp()
        sizes = ", ".join(f"{name} {human(d['bytes'])}" for name, d in sorted(status.get("databases", {}).items()))
        text = f"backup: last success {success} ({age(time.time() - when)} ago): {sizes}"
        if time.time() - when > max_age_hours * 3600:
            report.problem(text + f"; older than {max_age_hours:g} h: see journalctl -u pg-dump-dagster")
        else:
            report.line(text)
    if not status.get("ok"):
        report.problem(f"backup: the last attempt ({status.get('last_attempt')}) failed: {status.get('error')}; "
                       "see journalctl -u pg-dump-dagster")


def retention(report: Report, path: str) -> None:
    try:
        summary = json.loads(Path(path).read_text())
    except FileNotFoundError:
        report.line("retention: no pass yet (dagster-run-retention.timer makes the first)")
        return
    except (OSError, ValueError) as error:
        report.problem(f"retention: {path} unreadable ({error})")
        return
    when = datetime.datetime.fromisoformat(summary["last_pass"]).timestamp()
    text = (f"retention: last pass {summary['last_pass']} ({age(time.time() - when)} ago) deleted "
            f"{summary['deleted']} runs finished before {summary['cutoff']}")
    if time.time() - when > 2 * DAY:
        report.problem(text + "; none since: see journalctl -u dagster-run-retention")
    else:
        report.line(text)


def databases(report: Report, names: list[str]) -> None:
    query = ("SELECT datname, pg_database_size(datname) FROM pg_database WHERE datname IN ("
             + ", ".join("'" + name.replace("'", "''") + "'" for name in names) + ") ORDER BY 1")
    result = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-XAt", "-F", " ", "-c", query],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        report.problem(f"database: psql failed: {result.stderr.strip()[:300]}")
        return
    sizes = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    for name in names:
        if name in sizes:
            report.line(f"database {name}: {human(int(sizes[name]))}")
        else:
            report.problem(f"database {name}: missing")


def disk(report: Report, path: str, what: str) -> None:
    folder = Path(path)
    if not folder.exists():
        return
    used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    total, taken, _ = shutil.disk_usage(folder)
    percent = 100 * taken / total if total else 0
    text = f"disk {what} ({folder}): {human(used)}; its filesystem {percent:.0f}% full"
    if percent >= DISK_FULL_PERCENT:
        report.problem(text)
    else:
        report.line(text)


def main() -> int:
    wanted = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    report = Report()
    if wanted.get("units"):
        units(report, wanted["units"])
    if wanted.get("ports"):
        ports(report, wanted["ports"])
    if wanted.get("webserver"):
        webserver(report, wanted["webserver"])
    if wanted.get("run_retention_file"):
        retention(report, wanted["run_retention_file"])
    if wanted.get("databases"):
        databases(report, wanted["databases"])
    if wanted.get("backup_dir"):
        backups(report, wanted["backup_dir"], float(wanted.get("backup_max_age_hours", 36)))
    if wanted.get("dagster_home"):
        disk(report, f"{wanted['dagster_home']}/compute_logs", "compute logs")
    if wanted.get("backup_dir"):
        disk(report, wanted["backup_dir"], "dumps")
    json.dump({"lines": report.lines, "problems": report.problems}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
