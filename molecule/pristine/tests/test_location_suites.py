"""Every code location's own tests, run by the README's `make test-locations` on the
pristine Debian 13 host, pass on its Python 3.13 (the controller runs them on 3.11)."""

import re

CHECKOUT = "/root/dagster-ansible"
testinfra_hosts = ["ansible://pristine13"]


def test_every_location_suite_passed_on_python_3_13(host):
    log = host.file(f"{CHECKOUT}/readme-setup.log").content_string
    locations = host.check_output(f"ls {CHECKOUT}/code_locations/*/pyproject.toml").split()
    assert len(locations) >= 10
    for pyproject in locations:
        folder = pyproject.removeprefix(f"{CHECKOUT}/").removesuffix("pyproject.toml")
        parts = log.split(f"== {folder}\n", 1)
        assert len(parts) == 2, f"{folder} was not tested"
        section = parts[1].split("\n== ")[0]
        assert re.search(r"^\d+ passed", section, re.MULTILINE), section[-2000:]
        assert not re.search(r"\d+ (failed|errors?)\b", section), section[-2000:]
        assert "All code locations passed validation." in section, section[-2000:]
        venv_python = host.check_output(f"{CHECKOUT}/{folder}.venv/bin/python -c 'import sys; print(sys.version)'")
        assert venv_python.startswith("3.13."), (folder, venv_python)
