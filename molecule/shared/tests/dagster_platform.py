"""Helpers the molecule verifiers share: GraphQL against the webserver, playbook runs."""

from __future__ import annotations

import base64
import copy
import fcntl
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
ARTIFACTS = PROJECT / "artifacts"

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }
"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status }
  ... on PythonError { message } ... on RunNotFoundError { message } } }"""
RUN_TIMES = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status startTime endTime } } }"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
RUN_MESSAGES = """
query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection {
  events { __typename ... on MessageEvent { message } } } } }
"""
RETRIES = """
query($parent: String!) { runsOrError(filter: {tags: [{key: "dagster/parent_run_id", value: $parent}]}) {
  ... on Runs { results { runId status } } } }
"""


LAB_SECRETS = Path("/var/lib/dagster-lab/secrets")


class Webserver:
    """The UI and GraphQL through nginx: https with the host's certificate, basic auth."""

    def __init__(self, url: str, user: str, password: str, cafile: str):
        self.url = url.rstrip("/")
        self.context = ssl.create_default_context(cafile=cafile)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def as_user(self, user: str, password: str) -> Webserver:
        """The same UI, logged in as another user."""
        other = copy.copy(self)
        other.headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        return other

    def get(self, path: str, headers: dict | None = None, timeout: float = 10):
        req = urllib.request.Request(f"{self.url}{path}", headers={**self.headers, **(headers or {})})
        return urllib.request.urlopen(req, timeout=timeout, context=self.context)

    def gql(self, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body,
                                     headers={**self.headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
            doc = json.load(resp)
        assert "errors" not in doc, doc["errors"]
        return doc["data"]

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.get("/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} did not answer /server_info in {timeout}s")
            time.sleep(0.5)

    def locations(self) -> dict[str, dict]:
        entries = self.gql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
        return {entry["name"]: entry for entry in entries}

    def wait_loaded(self, timeout: float = 600) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            entries = self.locations()
            if all(e["loadStatus"] == "LOADED" for e in entries.values()):
                return entries
            if time.monotonic() > deadline:
                return entries
            time.sleep(1)

    def launch(self, location: str, job: str, run_config: dict | None = None, tags: dict | None = None,
               ops: list[str] | None = None, assets: list[list[str]] | None = None) -> str:
        """A run of the job, or of some of its ops or assets (each a key path)."""
        selector = {"repositoryLocationName": location, "repositoryName": "__repository__", "jobName": job}
        if ops:
            selector["solidSelection"] = ops
        if assets:
            selector["assetSelection"] = [{"path": path} for path in assets]
        params = {"selector": selector, "runConfigData": run_config or {},
                  "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}
        result = self.gql(LAUNCH, {"p": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        answer = self.gql(RUN_STATUS, {"id": run_id})["runOrError"]
        assert "status" in answer, f"run {run_id}: {answer}"
        return answer["status"]

    def wait_status(self, run_id: str, wanted: str, timeout: float = 600) -> str:
        """Poll until the run has the wanted status or a final one; the last status seen."""
        deadline = time.monotonic() + timeout
        while (status := self.run_status(run_id)) != wanted:
            if status in FINISHED or time.monotonic() > deadline:
                return status
            time.sleep(0.5)
        return status

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of a run's events, oldest first."""
        return [e.get("message") or e["__typename"]
                for e in self.gql(RUN_MESSAGES, {"id": run_id})["logsForRun"]["events"]]

    def retries_of(self, run_id: str) -> list[dict]:
        """Runs the daemon launched to retry this one."""
        return self.gql(RETRIES, {"parent": run_id})["runsOrError"]["results"]

    def launch_gated(self, tags: dict | None = None) -> tuple[str, str]:
        """A run of platform_alerts' gate_drill_job, STARTED, in flight until its gate file
        (returned with the run's id) exists on the location's host."""
        gate = f"/var/lib/dagster/gate-{uuid.uuid4().hex}"
        run_id = self.launch("platform_alerts", "gate_drill_job", tags=tags,
                             run_config={"ops": {"wait_for_gate": {"config": {"gate_file": gate}}}})
        assert self.wait_status(run_id, "STARTED") == "STARTED", self.run_messages(run_id)
        return run_id, gate

    # The timeout is generous: three scenarios' hosts share two cores, and a run's step
    # process can take minutes to start under that load. Polled each 0.25 s for its first
    # 30 s, as the benchmark times runs with it.
    def wait_run(self, run_id: str, timeout: float = 900) -> str:
        started = time.monotonic()
        while True:
            status = self.run_status(run_id)
            waited = time.monotonic() - started
            if status in FINISHED or waited > timeout:
                return status
            time.sleep(0.25 if waited < 30 else 1)


def platform_webserver(control_host, tmp_dir: Path) -> Webserver:
    """The control host's UI as a user reaches it: through nginx, trusting its certificate."""
    address = control_host.ansible.get_variables()["ansible_host"]
    cafile = tmp_dir / f"{address}.crt"
    cafile.write_text(control_host.file("/etc/nginx/dagster/tls.crt").content_string)
    password = (LAB_SECRETS / "ui_password").read_text().strip()
    return Webserver(f"https://{address}", "admin", password, str(cafile))


def reboot(*hosts: str, power_cut: bool = False) -> float:
    """Reboot lab hosts keeping their disks; the monotonic time their ssh answered again."""
    subprocess.run([sys.executable, str(PROJECT / "files" / "lab" / "lab.py"), "reboot", *hosts,
                    *(["--power-cut"] if power_cut else [])], check=True, timeout=300)
    return time.monotonic()


def inventory_dir() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def run_playbook(playbook: str, *extra_args: str, inventory: str = "") -> subprocess.CompletedProcess:
    """Run one of the project's playbooks against the scenario's hosts (or another
    inventory's) exactly as a user would."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "-i", inventory or inventory_dir(), str(PROJECT / playbook), *extra_args],
        cwd=PROJECT, env=env, text=True, capture_output=True, timeout=900,
    )


def run_site(*extra_args: str) -> subprocess.CompletedProcess:
    return run_playbook("site.yml", *extra_args)


# MainPID of every dagster-* unit in one call; parsed by unit_main_pids().
MAIN_PIDS_COMMAND = "systemctl show -p Id,MainPID 'dagster-*.service'"


def unit_main_pids(output: str) -> dict[str, str]:
    """Unit -> MainPID from the output of MAIN_PIDS_COMMAND."""
    blocks = (dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in output.split("\n\n"))
    return {b["Id"]: b["MainPID"] for b in blocks if b.get("Id")}


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    hosts = {}
    lines = output.splitlines()
    for line in lines[next(i for i, l in enumerate(lines) if l.startswith("PLAY RECAP")) + 1:]:
        if not line.strip():
            break  # the recap ends at a blank line (profile_tasks' timings may follow)
        name, _, counters = line.partition(":")
        if "ok=" not in counters:
            continue  # not a host's counters (a callback's line)
        hosts[name.strip()] = {k: int(v) for k, v in (pair.split("=") for pair in counters.split())}
    return hosts


def record(name: str, value) -> None:
    """Keep a measurement for the issue note (artifacts/measurements.json); a scenario
    that reuses another's tests keeps its figures under its own prefix."""
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "default")
    if scenario not in ("default", "multinode"):
        name = f"{scenario}.{name}"
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "measurements.json"
    with open(ARTIFACTS / ".measurements.lock", "w") as lock:  # scenarios run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = value
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def web(host, tmp_path_factory) -> Webserver:
    """The control host's UI (the scenario's `host`), ready to answer."""
    server = platform_webserver(host, tmp_path_factory.mktemp("tls"))
    server.wait_ready()
    return server


def daemon_code_servers(host) -> tuple[int, dict[str, list[tuple[int, int]]]]:
    """The daemon's age in seconds, and its servers of in-process locations: location ->
    [(pid, age in seconds)]."""
    daemon = host.check_output("systemctl show -P MainPID dagster-daemon.service")
    age = int(host.check_output(f"ps -o etimes= -p {daemon}"))
    servers = {}
    for line in host.run(f"ps -o pid=,etimes=,args= --ppid {daemon}").stdout.splitlines():  # rc 1: none
        pid, seconds, args = line.split(None, 2)
        found = re.search(r"/opt/dagster/locations/(\w+)/venv/bin/python -m dagster api grpc", args)
        if found:
            servers.setdefault(found[1], []).append((int(pid), int(seconds)))
    return age, servers
