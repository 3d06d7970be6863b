"""Prometheus metrics of a Dagster platform, read from its webserver's GraphQL API.

Dagster OSS has no metrics endpoint; this exporter asks the webserver (on loopback, no
database login) at each scrape and serves the answer in Prometheus' text format:

    python dagster_exporter.py --graphql http://127.0.0.1:3000/graphql --listen 10.0.0.5:9815 \
        --locations /opt/dagster/exporter/code-servers.json

Labels stay bounded: job_name, location, daemon, status; never a run id. (Not `job`:
Prometheus sets that label to the scrape job's name.)
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

IN_FLIGHT = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
FINISHED = ["SUCCESS", "FAILURE", "CANCELED"]
# Seconds; a run of a data pipeline takes from seconds to hours.
DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400]
# A run's update time and this clock may differ by a bit: each poll looks back this far.
LOOK_BACK_SECONDS = 60
# A code server answers a connection at once or not at all: one second, all probed at once.
PROBE_SECONDS = 1.0

STATE_QUERY = """
query {
  instance {
    daemonHealth { allDaemonStatuses { daemonType required healthy lastHeartbeatTime } }
    runQueueConfig { maxConcurrentRuns }
  }
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError {
      __typename ... on RepositoryLocation { repositories { jobs { name } } } } } }
  }
  %s
}
"""
COUNT_FIELD = '%s: runsOrError(filter: {statuses: [%s]}) { ... on Runs { count } }'
FINISHED_QUERY = """
query($after: Float!, $cursor: String) {
  runsOrError(filter: {statuses: [SUCCESS, FAILURE, CANCELED], updatedAfter: $after}, cursor: $cursor, limit: 500) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime updateTime } }
  }
}
"""


class ScrapeError(Exception):
    """One part of a scrape failed; the others are still served."""


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 10.0) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise ScrapeError(answer["errors"][0].get("message", "GraphQL error"))
    return answer["data"]


def reachable(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class FinishedRuns:
    """Counters and the duration histogram of runs that finished since the exporter
    started (Prometheus counters start at zero with their process).

    Each poll asks only for runs updated after `after` (the newest update seen, less
    LOOK_BACK_SECONDS), so a poll costs the same after a day as after a minute. `seen`
    keeps the runs that a later poll may return again; a run that finished before the
    window (its row updated later, e.g. a tag added) is not counted again."""

    since: float = field(default_factory=time.time)
    after: float | None = None
    counts: dict = field(default_factory=dict)  # (job, status) -> runs
    buckets: dict = field(default_factory=dict)  # job -> runs per duration bucket
    observed: dict = field(default_factory=dict)  # job -> runs with a duration
    sums: dict = field(default_factory=dict)  # job -> their total seconds
    seen: dict = field(default_factory=dict)  # run id -> when it finished, to count each once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, run: dict) -> None:
        key = (run["jobName"], run["status"])
        self.counts[key] = self.counts.get(key, 0) + 1
        if run["startTime"] and run["endTime"]:
            seconds = max(0.0, run["endTime"] - run["startTime"])
            job = run["jobName"]
            buckets = self.buckets.setdefault(job, [0] * len(DURATION_BUCKETS))
            for i, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.sums[job] = self.sums.get(job, 0.0) + seconds
            self.observed[job] = self.observed.get(job, 0) + 1

    def known(self, jobs) -> None:
        """Every (job, status) series exists from 0 before its first run finishes, so that
        Prometheus' increase() counts that first run too."""
        with self.lock:
            for job in jobs:
                for status in FINISHED:
                    self.counts.setdefault((job, status), 0)

    def poll(self, url: str, timeout: float) -> None:
        with self.lock:
            after = self.since - LOOK_BACK_SECONDS if self.after is None else self.after
            oldest = max(self.since, after - LOOK_BACK_SECONDS)  # finished earlier: counted or before our time
            cursor, newest = None, after
            while True:
                data = graphql(url, FINISHED_QUERY, {"after": after, "cursor": cursor}, timeout)["runsOrError"]
                if data["__typename"] != "Runs":
                    raise ScrapeError(f"runsOrError: {data['__typename']}")
                results = data["results"]
                for run in results:
                    finished = run["endTime"] or run["updateTime"] or 0
                    if run["runId"] not in self.seen and finished >= oldest:
                        self.seen[run["runId"]] = finished
                        self.add(run)
                    newest = max(newest, (run["updateTime"] or 0) - LOOK_BACK_SECONDS)
                if len(results) < 500:
                    break
                cursor = results[-1]["runId"]
            self.after = newest
            horizon = newest - LOOK_BACK_SECONDS  # the next poll's `oldest`
            self.seen = {run_id: finished for run_id, finished in self.seen.items() if finished >= horizon}


class DagsterCollector:
    """`locations`: the code servers, as a list or as the JSON file holding it, which is
    read at every scrape (a location added or removed needs no restart)."""

    def __init__(self, url: str, locations: list[dict] | Path, timeout: float = 10.0):
        self.url, self.locations, self.timeout = url, locations, timeout
        self.finished = FinishedRuns()
        self.errors: dict[str, int] = {}

    def _failed(self, part: str) -> None:
        self.errors[part] = self.errors.get(part, 0) + 1

    def collect(self):
        started = time.monotonic()
        up = 1
        counts_query = "\n  ".join(COUNT_FIELD % (status.lower(), status) for status in IN_FLIGHT)
        try:
            state = graphql(self.url, STATE_QUERY % counts_query, timeout=self.timeout)
        except Exception:  # the webserver is down or answers nonsense: say so, serve the rest
            state, up = None, 0
            self._failed("state")
        try:
            self.finished.poll(self.url, self.timeout)
        except Exception:
            self._failed("finished_runs")
        if state is not None and state["workspaceOrError"]["__typename"] == "Workspace":
            self.finished.known(job["name"] for entry in state["workspaceOrError"]["locationEntries"]
                                for repository in (entry["locationOrLoadError"] or {}).get("repositories", [])
                                for job in repository["jobs"])

        yield GaugeMetricFamily("dagster_up", "1 when the webserver answered this scrape's GraphQL query.", value=up)
        if state is not None:
            yield from self._state(state)
        yield from self._finished()
        yield from self._code_servers()

        errors = CounterMetricFamily("dagster_exporter_scrape_errors", "Failed parts of scrapes, by part.",
                                     labels=["part"])
        for part in ("state", "finished_runs", "code_servers"):
            errors.add_metric([part], self.errors.get(part, 0))
        yield errors
        yield GaugeMetricFamily("dagster_exporter_scrape_duration_seconds", "Time this scrape took.",
                                value=time.monotonic() - started)

    def _state(self, state: dict):
        runs = GaugeMetricFamily("dagster_runs", "Runs not finished yet, by status.", labels=["status"])
        for status in IN_FLIGHT:
            runs.add_metric([status], state[status.lower()]["count"])
        yield runs
        yield GaugeMetricFamily("dagster_run_queue_depth", "Runs waiting in the queue (QUEUED).",
                                value=state["queued"]["count"])
        config = state["instance"]["runQueueConfig"]
        if config is not None:
            yield GaugeMetricFamily("dagster_run_queue_limit", "Runs that may run at once (max_concurrent_runs).",
                                    value=config["maxConcurrentRuns"])
        now = time.time()
        age = GaugeMetricFamily("dagster_daemon_heartbeat_age_seconds", "Seconds since each daemon's last heartbeat.",
                                labels=["daemon"])
        healthy = GaugeMetricFamily("dagster_daemon_healthy", "1 when the daemon is healthy (Dagster's own verdict).",
                                    labels=["daemon"])
        for daemon in state["instance"]["daemonHealth"]["allDaemonStatuses"]:
            if not daemon["required"]:
                continue
            beat = daemon["lastHeartbeatTime"]
            age.add_metric([daemon["daemonType"]], now - beat if beat else float("inf"))
            healthy.add_metric([daemon["daemonType"]], 1 if daemon["healthy"] else 0)
        yield age
        yield healthy
        workspace = state["workspaceOrError"]
        loaded = GaugeMetricFamily("dagster_location_loaded",
                                   "1 when the location is loaded without error, by location.", labels=["location"])
        if workspace["__typename"] == "Workspace":
            for entry in workspace["locationEntries"]:
                ok = entry["loadStatus"] == "LOADED" and \
                    (entry["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
                loaded.add_metric([entry["name"]], 1 if ok else 0)
        yield loaded

    def _finished(self):
        finished = self.finished
        with finished.lock:
            total = CounterMetricFamily("dagster_runs_finished", "Runs finished since the exporter started, by job and status.",
                                        labels=["job_name", "status"])
            for (job, status), n in sorted(finished.counts.items()):
                total.add_metric([job, status], n)
            yield total
            duration = HistogramMetricFamily("dagster_run_duration_seconds",
                                             "Duration of the runs finished since the exporter started, by job.",
                                             labels=["job_name"])
            for job, buckets in sorted(finished.buckets.items()):
                count = finished.observed[job]
                pairs = [(str(bound), n) for bound, n in zip(DURATION_BUCKETS, buckets)] + [("+Inf", count)]
                duration.add_metric([job], pairs, finished.sums[job])
            yield duration

    def _code_servers(self):
        up = GaugeMetricFamily("dagster_code_server_reachable",
                               "1 when the code server of a grpc_server location accepts a connection.",
                               labels=["location"])
        locations = self.locations
        if isinstance(locations, Path):
            try:
                locations = json.loads(locations.read_text())
            except (OSError, ValueError):
                self._failed("code_servers")
                locations = []
        if locations:
            with ThreadPoolExecutor(min(len(locations), 32)) as pool:
                answers = pool.map(lambda loc: reachable(loc["address"], loc["port"], PROBE_SECONDS), locations)
                for location, ok in zip(locations, answers):
                    up.add_metric([location["name"]], 1 if ok else 0)
        yield up


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphql", required=True, help="the webserver's GraphQL URL")
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT to serve /metrics on")
    parser.add_argument("--locations", type=Path, help="JSON list of {name, address, port} of the code servers")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    registry = CollectorRegistry()
    registry.register(DagsterCollector(args.graphql, args.locations or [], args.timeout))
    address, _, port = args.listen.rpartition(":")
    server = make_server(address.strip("[]"), int(port), make_wsgi_app(registry), handler_class=_QuietHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
