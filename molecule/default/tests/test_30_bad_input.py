"""Bad inventory input fails before anything on the host changes, saying what to fix."""

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from dagster_platform import PROJECT, recap, record, run_playbook, run_site

BASE = yaml.safe_load((PROJECT / "inventory/lab/group_vars/all/locations.yml").read_text())["dagster_locations"]
HELLO = {"name": "extra", "source": "code_locations/hello", "module": "hello.definitions", "port": 4010}
# Files and folders the platform owns; runtime data under /var/lib/dagster is left out.
SNAPSHOT = (
    "find /etc/dagster /opt/dagster /etc/systemd/system /etc/postgresql /usr/local/share/ca-certificates "
    "/etc/ansible/facts.d /etc/nginx /etc/fail2ban /etc/tmpfiles.d /usr/local/sbin "
    "/etc/default/prometheus-node-exporter /etc/nftables-dagster-metrics.nft "
    "-printf '%p %s %m %u %T@\\n' | sort | sha256sum"
)

CASES = {
    "duplicate-name": ([dict(HELLO, name="hello")], 'location name "hello" is used by more than one entry'),
    "port-taken": ([dict(HELLO, port=4000)], 'port 4000 on {host} is already used by location "hello"'),
    "port-of-webserver": ([dict(HELLO, port=3000)], "clashes with the webserver"),
    "port-of-postgresql": ([dict(HELLO, port=5432)], "clashes with PostgreSQL"),
    "bad-name": ([dict(HELLO, name="Extra-Location")], "the name must match ^[a-z][a-z0-9_]*$"),
    "unknown-type": ([dict(HELLO, type="docker")], "docker"),
    "missing-source": ([dict(HELLO, source="code_locations/does_not_exist")], "does not exist on the controller"),
    "source-without-lock": ([dict(HELLO, source="files/lab")], "needs pyproject.toml and uv.lock"),
    "host-not-in-dagster_code": ([dict(HELLO, host="db1")], 'host "db1" is not in the dagster_code group'),
    "dagster-previous-minor": ([dict(HELLO, source="molecule/default/fixtures/dagster_previous_minor")],
                               'location "extra": its uv.lock pins dagster 1.12.22 but the control plane runs 1.13.27'),
    "memory-not-a-size": ([dict(HELLO, memory_max="2 GB")], 'location "extra": memory_max "2 GB" is not a size'),
    "env-placeholder": ([dict(HELLO, env={"OPENAI_API_KEY": "CHANGE-ME"})],
                        'location "extra": env OPENAI_API_KEY is still the example placeholder CHANGE-ME'),
    "users": ([dict(HELLO, name="a_location_named_at_length", port=4010), dict(HELLO, name="shares", user="dagster", port=4011)],
              ['location "a_location_named_at_length": user "dagster-a_location_named_at_length" is not a Linux account name',
               'names over 24 characters need a shorter user',
               'location "shares": user "dagster" is not a Linux account name of its own']),
    # Forms: every bad entry is named in the one message.
    "forms": ([dict(HELLO, name="x" * 64, port=4010),
               dict(HELLO, name="bad_module", module="hello.definitions; rm", port=4011),
               dict(HELLO, name="bad_bind", bind="code-host", port=4012),
               dict(HELLO, name="platform_env", env={"DAGSTER_HOME": "/tmp"}, port=4014),
               dict(HELLO, name="two_lines", env={"GREETING": "hello\nworld"}, port=4015),
               {"name": "bad_file", "type": "python_file", "source": "code_locations/file_example",
                "file": "../file_example/src/file_example/definitions.py"}],
              [f'location "{"x" * 64}": the name is 64 characters long: keep it to 63 or fewer',
               'location "bad_module": module "hello.definitions; rm" is not a Python module path',
               'location "bad_bind": bind "code-host" is not an IPv4 or IPv6 address',
               'location "platform_env": env DAGSTER_HOME is set by the platform: remove it from env.',
               'location "two_lines": env GREETING holds a newline or another control character',
               'location "bad_file": file "../file_example/src/file_example/definitions.py" must be a .py path relative']),
}


SETTING_CASES = {
    "login-name-with-a-colon": ({"dagster_proxy_users": [{"name": "ad:min", "password": "a-long-enough-password"}]},
                                "dagster_proxy_users and dagster_proxy_viewers: each name must be unique across both"),
    "hash-rounds-too-few": ({"dagster_proxy_password_hash_rounds": 10},
                            "dagster_proxy_password_hash_rounds must be between 1000 and 999999999"),
    "negative-drain": ({"dagster_code_drain_timeout_seconds": -1},
                       "dagster_code_drain_timeout_seconds must be 0 (no wait for runs in flight) or more seconds"),
    "start-timeout-too-short": ({"dagster_code_start_timeout_seconds": 5},
                                "dagster_code_start_timeout_seconds must be 10 or more"),
    "backup-time-not-a-calendar": ({"dagster_postgresql_backup_on_calendar": "every night"},
                                   'dagster_postgresql_backup_on_calendar "every night" is not a systemd calendar expression'),
    "backup-folder-relative": ({"dagster_postgresql_backup_dir": "backups"},
                               "dagster_postgresql_backup_dir must be an absolute folder path other than /"),
    "backups-kept-zero": ({"dagster_postgresql_backup_keep": 0}, "dagster_postgresql_backup_keep must be 1 or more, got 0"),
    "retention-negative": ({"dagster_run_retention_days": -1},
                           "dagster_run_retention_days must be 0 (keep every run) or a number of days, got -1"),
    "retention-time-not-a-calendar": ({"dagster_control_run_retention_on_calendar": "nightly at 3"},
                                      'dagster_control_run_retention_on_calendar "nightly at 3" is not a systemd calendar'),
    "ban-ignore-not-an-address": ({"dagster_proxy_login_ban_ignore": ["10.1.2.0/24", "office-vpn"]},
                                  'dagster_proxy_login_ban_ignore a list of IP addresses or CIDR networks (not ["office-vpn"])'),
    "pgadmin-password-short": ({"dagster_pgadmin_password": "short"},
                               "dagster_pgadmin_password must have at least 12 characters (in a vault variable), got 5."),
    "pgadmin-path-of-the-ui": ({"dagster_pgadmin_path": "/graphql"},
                               'dagster_pgadmin_path "/graphql" must be one path segment'),
    "ban-window-too-short": ({"dagster_proxy_login_ban_window_seconds": 5},
                             "dagster_proxy_login_ban_window_seconds 60 to 86400"),
    "platform-forms": ({"dagster_user": "Dagster", "dagster_home_dir": "var/lib/dagster", "dagster_python_index_url": "pypi/simple",
                        "dagster_db_host": "db_1.example", "dagster_db_port": 5433, "dagster_webserver_port": 80,
                        "dagster_warehouse_db_name": "warehouse-db"},
                       ['dagster_user "Dagster" is not a Linux account name',
                        'dagster_home_dir "var/lib/dagster" must be an absolute folder other than /',
                        'dagster_python_index_url "pypi/simple" is not an http(s) URL',
                        'dagster_db_host "db_1.example" is not a host name or IPv4 address',
                        "dagster_db_port must be a port from 1 to 65535, and 5432 while dagster_db installs PostgreSQL",
                        "dagster_webserver_port must be a port from 1024 to 65535 (the webserver runs without privileges), got 80.",
                        'dagster_warehouse_db_name "warehouse-db" is not a PostgreSQL name']),
    "grpc-sources-not-addresses": ({"dagster_code_grpc_allowed_sources": ["control.example"]},
                                   'dagster_code_grpc_allowed_sources must list IPv4 or IPv6 addresses'),
    "control-forms": ({"dagster_control_webserver_bind": "localhost", "dagster_control_ready_timeout_seconds": 5,
                       "dagster_control_webserver_path_prefix": "/dag ster"},
                      ['dagster_control_webserver_bind "localhost" must be an IPv4 address',
                       'dagster_control_webserver_path_prefix "/dag ster" must be empty or /segments',
                       "dagster_control_ready_timeout_seconds must be 10 to 3600, got 5."]),
    "host-forms": ({"dagster_host_uv_version": "latest", "dagster_host_packages": ["python3", "Python3 venv"]},
                   ['dagster_host_uv_version "latest" is not a uv release number',
                    'dagster_host_packages: ["Python3 venv"] are not Debian package names']),
    "instance-forms": ({"dagster_instance_env": {"DAGSTER_HOME": "/tmp", "2FA": "x"}, "dagster_instance_tick_retention_days": 0,
                        "dagster_instance_dequeue_interval_seconds": 0},
                       ["dagster_instance_tick_retention_days must be 1 or more, got 0.",
                        "dagster_instance_dequeue_interval_seconds must be 1 to 60, got 0.",
                        "dagster_instance_env DAGSTER_HOME is set by the platform",
                        'dagster_instance_env key "2FA" is not an environment variable name']),
    "postgresql-forms": ({"dagster_postgresql_clients": ["10.77.0.0/24"], "dagster_postgresql_backup_max_age_hours": 0},
                         ['dagster_postgresql_clients: ["10.77.0.0/24"] are not IPv4 or IPv6 addresses without a mask',
                          "dagster_postgresql_backup_max_age_hours must be 1 or more, got 0."]),
    "proxy-forms": ({"dagster_proxy_server_name": "dagster lab", "dagster_proxy_self_signed_days": 3650, "dagster_proxy_port": 4000},
                    ["dagster_proxy_port must be a port from 1 to 65535 that no location of this host uses, got 4000.",
                     'dagster_proxy_server_name "dagster lab" is not a host name or IP address',
                     "dagster_proxy_self_signed_days must be 1 to 825 (browsers refuse longer), got 3650."]),
    "db-ca-not-a-certificate": ({"dagster_db_tls_ca_certificate": str(PROJECT / "README.md")},
                                f'dagster_db_tls_ca_certificate "{PROJECT / "README.md"}" is not a PEM certificate file on the controller'),
    "runs-login": ({"dagster_db_runs_password": "", "dagster_db_runs_user": "dagster"},
                   ['dagster_db_runs_password is empty: set it (in a vault variable) for "dagster"',
                    'dagster_db_runs_user "dagster" must be a PostgreSQL name of its own']),
    "metrics-forms": ({"dagster_metrics_scrapers": ["prometheus.example"], "dagster_metrics_exporter_port": 3000,
                       "dagster_metrics_prometheus_host": "nowhere", "dagster_metrics_alert_failure_window": "an hour"},
                      ['dagster_metrics_scrapers must list IPv4 or IPv6 addresses (nftables takes no names): ["prometheus.example"]',
                       "is already used by a location, the webserver or PostgreSQL: choose another.",
                       'dagster_metrics_prometheus_host "nowhere" is not a host of dagster_db, dagster_control or dagster_code',
                       'dagster_metrics_alert_failure_window "an hour" is not a Prometheus duration']),
    "retention-batch-zero": ({"dagster_control_run_retention_batch_size": 0},
                             "dagster_control_run_retention_batch_size must be 1 to 10000, got 0"),
    "empty-db-password": ({"dagster_db_password": ""}, "dagster_db_password is empty"),
}
# Every case: the variables it sets (as -e would) and what the refusal must say.
ALL_CASES = {f"location-{name}": ({"dagster_locations": BASE + entries}, message)
             for name, (entries, message) in CASES.items()} | {f"setting-{name}": case for name, case in SETTING_CASES.items()}


class PlainDumper(yaml.SafeDumper):
    """Every case's copy of the locations written out, without YAML anchors."""

    def ignore_aliases(self, data):
        return True


def harness_play(cases: dict[str, dict], outcomes_file: Path) -> list[dict]:
    """One play that runs the preflight's own task file once per case, with the case's
    variables on the include, and keeps what each refusal said: one ansible-playbook start
    and one connection for every case, not one each (41 site.yml runs took 13.5 of the
    scenario's 58 min of tests)."""
    tasks = [{"name": "Start with no outcome", "ansible.builtin.set_fact": {"__outcomes": {}}}]
    for name, settings in cases.items():
        tasks.append({
            "name": f"Case {name}",
            "block": [
                {"name": "Run the preflight's checks", "vars": settings, "tags": ["always"],
                 "ansible.builtin.include_tasks": {"file": str(PROJECT / "playbooks/tasks/preflight.yml"),
                                                   "apply": {"tags": ["always"]}}},
                {"name": "Nothing refused",
                 "ansible.builtin.set_fact": {"__outcomes": f"{{{{ __outcomes | combine({{'{name}': 'passed'}}) }}}}"}},
            ],
            # The refusal's message (and a spec check's list), never the whole result:
            # that holds the task's variables, secrets among them.
            "rescue": [
                {"name": "Keep what the refusal said", "ansible.builtin.set_fact": {"__outcomes": (
                    f"{{{{ __outcomes | combine({{'{name}': ansible_failed_result.msg | default('') ~ ' ' ~ "
                    "ansible_failed_result.argument_errors | default([]) | join(' ')}) }}")}},
            ],
        })
    tasks.append({"name": "Write the outcomes on the controller", "delegate_to": "localhost",
                  "changed_when": False,  # the recap then counts what changed on the host only
                  "ansible.builtin.copy": {"content": "{{ __outcomes | to_json }}", "dest": str(outcomes_file),
                                           "mode": "0600"}})
    return [{"name": "Every bad-input case through the preflight's checks",
             "hosts": "dagster_db:dagster_code:dagster_control", "gather_facts": True, "gather_subset": ["min"],
             "tasks": tasks}]


@pytest.fixture(scope="module")
def refusals(host, tmp_path_factory) -> dict[str, str]:
    """What the preflight said for every case, each message on one line. The inventory as
    it is comes last and must pass: no case's variables outlive it."""
    folder = tmp_path_factory.mktemp("cases")
    cases = {name: settings for name, (settings, _) in ALL_CASES.items()} | {"inventory-as-it-is": {}}
    playbook = folder / "cases.yml"
    playbook.write_text(yaml.dump(harness_play(cases, folder / "outcomes.json"), Dumper=PlainDumper, sort_keys=False))
    before = host.check_output(SNAPSHOT)
    started = time.monotonic()
    result = run_playbook(str(playbook))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("bad_input_cases_seconds", {"cases": len(cases), "seconds": round(time.monotonic() - started, 1)})
    assert all(counters["changed"] == 0 for counters in recap(result.stdout).values()), result.stdout[-3000:]
    assert host.check_output(SNAPSHOT) == before
    outcomes = json.loads((folder / "outcomes.json").read_text())
    assert outcomes.pop("inventory-as-it-is") == "passed"
    assert outcomes.keys() == ALL_CASES.keys()
    return {name: " ".join(said.split()) for name, said in outcomes.items()}


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_bad_input_is_refused_saying_what_to_fix(host, refusals, case):
    _, message = ALL_CASES[case]
    said = refusals[case]
    assert said != "passed", f"{case} was not refused"
    for sentence in [message] if isinstance(message, str) else message:
        assert sentence.format(host=host.backend.get_hostname()) in said, said[-3000:]


# Through site.yml, as a user runs it: one case refused by the first role's checks, one
# by the control plane's (after every other role's checks passed).
@pytest.mark.parametrize("case", ["setting-platform-forms", "location-dagster-previous-minor"])
def test_bad_input_stops_site_yml_before_any_change(host, tmp_path, case):
    settings, message = ALL_CASES[case]
    extra = tmp_path / "bad.yml"
    extra.write_text(yaml.safe_dump(settings))
    before = host.check_output(SNAPSHOT)
    result = run_site("-e", f"@{extra}")
    assert result.returncode != 0
    said = " ".join(result.stdout.split())  # the message as one line, however the callback wraps it
    for sentence in [message] if isinstance(message, str) else message:
        assert sentence.format(host=host.backend.get_hostname()) in said, result.stdout[-3000:]
    assert "changed=0" in result.stdout.split("PLAY RECAP")[-1]
    assert host.check_output(SNAPSHOT) == before


def test_a_second_control_host_fails_before_any_change(host, tmp_path):
    """The same machine under a second name in dagster_control: one webserver and daemon per database."""
    name = host.backend.get_hostname()
    molecule_hosts = yaml.safe_load(Path(os.environ["MOLECULE_INVENTORY_FILE"]).read_text())["all"]["hosts"]
    extra = tmp_path / "second-control.yml"
    extra.write_text(yaml.safe_dump({"all": {"children": {"dagster_control": {"hosts": {
        "second-control": molecule_hosts[name]}}}}}))
    before = host.check_output(SNAPSHOT)
    result = run_site("-i", str(extra))
    assert result.returncode != 0
    said = " ".join(result.stdout.split())
    assert f'dagster_control has 2 hosts ["{name}", "second-control"]' in said or \
        f'dagster_control has 2 hosts ["second-control", "{name}"]' in said, result.stdout[-3000:]
    assert "put exactly one host in dagster_control" in said
    assert "changed=0" in result.stdout.split("PLAY RECAP")[-1]
    assert host.check_output(SNAPSHOT) == before



def test_an_unknown_release_fails_before_any_change(host):
    """A host whose release has no vars file (here: one that says it is Debian 11)."""
    saved = "/root/release-files.orig"
    host.check_output(f"mkdir -p {saved} && cp -a /etc/debian_version /usr/lib/os-release {saved}/")
    try:
        host.check_output(
            "echo 11.11 > /etc/debian_version && "
            "sed -i -e 's/^VERSION_ID=.*/VERSION_ID=\"11\"/' -e 's/^VERSION_CODENAME=.*/VERSION_CODENAME=bullseye/' "
            "/usr/lib/os-release"
        )
        before = host.check_output(SNAPSHOT)
        result = run_site()
        assert result.returncode != 0
        assert "runs Debian 11.11, which this platform does not support: use Debian 12, Debian 13, Ubuntu 24." \
            in result.stdout, result.stdout[-3000:]
        assert "changed=0" in result.stdout.split("PLAY RECAP")[-1]
        assert host.check_output(SNAPSHOT) == before
    finally:
        host.check_output(f"cp -a {saved}/debian_version /etc/ && cp -a {saved}/os-release /usr/lib/ && rm -r {saved}")
