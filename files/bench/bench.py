#!/usr/bin/env python3
"""The deploy loop, measured: what a user pays for each re-run of site.yml.

Boots its own all-in-one lab host (the lab inventory's settings and locations), measures
`--check --diff` on it while fresh (check_fresh), installs the platform (first_install),
then measures, each against its target:
  noop_10          a re-run that changes nothing, 10 locations (changed=0 checked)
  code_change      a code change of one grpc_server location (only its server restarts)
  code_deploy      the same with `--tags deploy`, the short run for new code
  add_location     from playbook start until a run of the new location, launched over
                   GraphQL, succeeds
  remove_location  a run that removes that location
  noop_30          a re-run that changes nothing, 30 locations
  marginal         (noop_30 - noop_10) / 20: what one more location adds to a no-op run
Each of these is measured BENCH_REPEATS times (3 unless set) and its figure is the median:
the machines this runs on are shared, and one run moves by several seconds with their
load; every run's seconds are kept beside it (runs). check_fresh, first_install and
add_20_locations run once.
Prints the table beside the previous result and appends the figures, with the machine's
speed before and after (cpu_seconds), to files/bench/history.jsonl (kept in git, so a
regression shows). Results of this run also go to artifacts/bench.json, and the slowest
tasks of each measured run (profile_tasks) to artifacts/bench-profile-<figure>.txt.
Run as root: `make bench`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "molecule" / "shared" / "tests"))
from dagster_platform import LAB_SECRETS, MAIN_PIDS_COMMAND, Webserver, recap, unit_main_pids  # noqa: E402

HOST, ADDRESS = "dagster-bench", "10.77.0.60"
RELEASE = os.environ.get("DAGSTER_LAB_RELEASE", "trixie")
HISTORY = PROJECT / "files" / "bench" / "history.jsonl"
LAB = [sys.executable, str(PROJECT / "files" / "lab" / "lab.py")]
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
if REPEATS < 1:
    raise SystemExit(f"bench: BENCH_REPEATS must be 1 or more, got {REPEATS}")
TARGETS = {  # seconds, from the deploy-loop issue
    "noop_10": 20.0,
    "code_change": 20.0,
    "code_deploy": 20.0,
    "add_location": 30.0,
    "remove_location": 20.0,
    "marginal": 0.5,
}
# The lab's first ten locations: the figures' "10 locations" since the first benchmark.
BASE = yaml.safe_load((PROJECT / "inventory/lab/group_vars/all/locations.yml").read_text())["dagster_locations"][:10]


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.inventory = workdir / "inventory"
        self.inventory.mkdir()
        (self.inventory / "group_vars").symlink_to(PROJECT / "inventory" / "lab" / "group_vars")
        groups = ["dagster_db", "dagster_control", "dagster_code", "lab_standins"]
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "hosts": {HOST: {"ansible_host": ADDRESS}},
            "children": {g: {"hosts": {HOST: None}} for g in groups}}}))
        # hello's code comes from a copy, so that the benchmark can change it.
        self.hello = workdir / "hello"
        shutil.copytree(PROJECT / "code_locations" / "hello", self.hello,
                        ignore=shutil.ignore_patterns(".venv", "__pycache__", ".pytest_cache"))
        self.locations = [dict(loc, source=str(self.hello)) if loc["name"] == "hello" else loc for loc in BASE]

    def playbook(self, playbook: str, locations: list[dict], *args: str) -> tuple[float, dict]:
        extra = self.workdir / "locations.yml"
        extra.write_text(yaml.safe_dump({"dagster_locations": locations}))
        env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", PROFILE_TASKS_TASK_OUTPUT_LIMIT="30")
        started = time.monotonic()
        result = subprocess.run(["ansible-playbook", "-i", str(self.inventory), str(PROJECT / playbook),
                                 "-e", f"@{extra}", *args], cwd=PROJECT, env=env, text=True, capture_output=True)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"bench: {playbook} failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}")
        self.last_output = result.stdout
        return seconds, recap(result.stdout)[HOST]

    def keep_profile(self, figure: str, output: str | None = None) -> None:
        """The slowest tasks of the last run, or of output (profile_tasks): where the time goes."""
        output = output or self.last_output
        (PROJECT / "artifacts").mkdir(exist_ok=True)
        (PROJECT / "artifacts" / f"bench-profile-{figure}.txt").write_text(output[output.rindex("PLAY RECAP"):])

    def site(self, locations: list[dict], *args: str) -> tuple[float, dict]:
        return self.playbook("site.yml", locations, *args)

    def noop(self, locations: list[dict]) -> float:
        seconds, counters = self.site(locations)
        assert counters["changed"] == 0, counters
        return seconds

    def shell(self, command: str) -> str:
        return subprocess.run([*LAB, "shell", HOST, "--", "sh", "-c", command],
                              check=True, text=True, capture_output=True).stdout.strip()

    def main_pids(self) -> dict[str, str]:
        return unit_main_pids(self.shell(MAIN_PIDS_COMMAND))

    def webserver(self) -> Webserver:
        cafile = self.workdir / "tls.crt"
        cafile.write_text(self.shell("cat /etc/nginx/dagster/tls.crt"))
        password = (LAB_SECRETS / "ui_password").read_text().strip()
        web = Webserver(f"https://{ADDRESS}", "admin", password, str(cafile))
        web.wait_ready()
        return web


def extra_hello(index: int, port: int, source: Path) -> dict:
    return {"name": f"bench_{index:02d}", "source": str(source), "module": "hello.definitions", "port": port}


def measure(bench: Bench) -> tuple[dict, dict]:
    figures: dict[str, float] = {}
    runs: dict[str, list[float]] = {}

    def keep(figure: str, seconds: list[float], output: str | None = None) -> None:
        runs[figure] = [round(s, 1) for s in seconds]
        figures[figure] = round(statistics.median(seconds), 1)
        bench.keep_profile(figure, output)  # of its last run
        log(f"{figure}: {figures[figure]}s (median of {runs[figure]})")

    seconds, counters = bench.site(bench.locations, "--check", "--diff")
    assert counters["changed"] > 0 and bench.shell("ls /opt") == "", "--check changed the fresh host"
    figures["check_fresh"] = round(seconds, 1)
    log(f"--check --diff on the fresh host: {seconds:.1f}s")
    seconds, _ = bench.playbook("playbooks/lab.yml", bench.locations)
    figures["first_install"] = round(seconds, 1)
    log(f"installed in {seconds:.0f}s")

    bench.site(bench.locations)  # settles anything the first run left to do
    keep("noop_10", [bench.noop(bench.locations) for _ in range(REPEATS)])

    definitions = bench.hello / "src" / "hello" / "definitions.py"
    for figure, args in [("code_change", ()), ("code_deploy", ("--tags", "deploy"))]:
        seconds = []
        for _ in range(REPEATS):
            before = bench.main_pids()
            definitions.write_text(definitions.read_text() + f"\n# bench {time.time()}\n")
            seconds.append(bench.site(bench.locations, *args)[0])
            after = bench.main_pids()
            restarted = sorted(unit for unit in before if after.get(unit) != before[unit])
            assert restarted == ["dagster-code@hello.service"], restarted
        keep(figure, seconds)

    web = bench.webserver()
    new = extra_hello(0, 4050, bench.hello)
    added, removed = [], []
    for _ in range(REPEATS):
        started = time.monotonic()
        bench.site(bench.locations + [new])
        status = web.wait_run(web.launch(new["name"], "hello_job"))
        assert status == "SUCCESS", status
        added.append(time.monotonic() - started)
        add_output = bench.last_output
        removed.append(bench.site(bench.locations + [dict(new, state="absent")])[0])
        assert bench.main_pids().get(f"dagster-code@{new['name']}.service", "0") == "0", "its server still runs"
    keep("add_location", added, add_output)
    keep("remove_location", removed)

    thirty = bench.locations + [extra_hello(i, 4100 + i, bench.hello) for i in range(1, 21)]
    seconds, _ = bench.site(thirty)
    figures["add_20_locations"] = round(seconds, 1)
    log(f"added 20 locations in {seconds:.0f}s")
    keep("noop_30", [bench.noop(thirty) for _ in range(REPEATS)])
    figures["marginal"] = round((figures["noop_30"] - figures["noop_10"]) / 20, 2)
    return figures, runs


def cpu_seconds() -> float:
    """Seconds a fixed pure-Python loop takes here, best of three. The machines this runs
    on are shared: their speed moves by up to 2x within an hour, and every figure with it.
    Kept beside the figures (before and after), so that two results compare fairly."""
    best = float("inf")
    for _ in range(3):
        started, total = time.perf_counter(), 0
        for i in range(3_000_000):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def report(figures: dict, runs: dict, calibration: dict) -> None:
    history = [json.loads(line) for line in HISTORY.read_text().splitlines()] if HISTORY.exists() else []
    previous = history[-1]["figures"] if history else {}
    print(f"\n{'figure':<18}{'target':>9}{'now':>9}{'previous':>10}{'runs':>20}")
    for name, value in figures.items():
        target = TARGETS.get(name)
        mark = "" if target is None else ("  ok" if value <= target else "  MISSED")
        spread = " ".join(f"{s:g}" for s in runs.get(name, []))
        print(f"{name:<18}{'' if target is None else f'<= {target:g}':>9}{value:>9g}"
              f"{previous.get(name, ''):>10}{spread:>20}{mark}")
    print(f"cpu_seconds (a fixed Python loop; lower is a faster machine): {calibration}"
          f", previous {history[-1].get('cpu_seconds', 'not measured') if history else 'none'}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, text=True,
                            capture_output=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT, text=True,
                      capture_output=True).stdout.strip():
        commit += "-dirty"  # measured with changes not committed yet
    entry = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "release": RELEASE,
             "cpus": os.cpu_count(), "machine": platform.machine(), "figures": figures,
             "runs": runs, "cpu_seconds": calibration}
    with HISTORY.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    (PROJECT / "artifacts").mkdir(exist_ok=True)
    (PROJECT / "artifacts" / "bench.json").write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it boots a lab host)")
    calibration = {"before": cpu_seconds()}
    subprocess.run([*LAB, "up", "--fresh", f"{HOST}={ADDRESS}@{RELEASE}"], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="dagster-bench-") as workdir:
            figures, runs = measure(Bench(Path(workdir)))
    finally:
        subprocess.run([*LAB, "down", HOST], check=False)
    calibration["after"] = cpu_seconds()
    report(figures, runs, calibration)


if __name__ == "__main__":
    main()
