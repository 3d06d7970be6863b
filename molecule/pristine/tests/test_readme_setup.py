"""The README's set-up on a pristine Debian machine: the toolchain and lint pass, on the
release's own Python, with nothing installed into the system Python."""

import pytest

CHECKOUT = "/root/dagster-ansible"
PYTHON = {"12": "3.11", "13": "3.13"}


@pytest.fixture(scope="module")
def release(host) -> str:
    return host.file("/etc/debian_version").content_string.split(".")[0]


def test_the_readme_commands_succeed(host):
    log = host.file(f"{CHECKOUT}/readme-setup.log").content_string
    assert host.file(f"{CHECKOUT}/readme-setup.rc").content_string.strip() == "0", log[-4000:]
    # make lint ran to its end: yamllint, ansible-lint's verdict, both syntax checks.
    assert "yamllint --strict ." in log
    assert "Passed: 0 failure(s), 0 warning(s)" in log, log[-4000:]
    assert log.count("ansible-playbook -i") == 2


def test_the_toolchain_runs_on_the_release_python(host, release):
    version = host.check_output(f"{CHECKOUT}/.venv/bin/python -c 'import sys; print(sys.version)'")
    assert version.startswith(PYTHON[release] + "."), version
    base = host.check_output(f"{CHECKOUT}/.venv/bin/python -c 'import sys; print(sys.base_prefix)'")
    assert base == "/usr"
    core = host.check_output(f"{CHECKOUT}/.venv/bin/ansible-playbook --version").splitlines()[0]
    assert core.startswith("ansible-playbook [core 2.19."), core


def test_uv_lives_in_a_private_venv(host):
    uv = host.run(f"{CHECKOUT}/.cache/bootstrap/bin/uv --version")
    assert uv.rc == 0 and uv.stdout.startswith("uv 0.13.9"), uv.stdout + uv.stderr
    assert host.run("command -v uv").rc != 0


def test_the_system_python_is_untouched(host):
    # Debian's python3 stays without pip, and nothing was installed into it.
    assert host.run("/usr/bin/python3 -m pip --version").rc != 0
    for module in ("uv", "ansible", "molecule"):
        assert host.run(f"/usr/bin/python3 -c 'import {module}'").rc != 0, module
    assert host.check_output("find /usr/local/lib /usr/local/bin -path '*-packages/*' -o -type f") == ""
