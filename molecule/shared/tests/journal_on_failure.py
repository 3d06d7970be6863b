"""On a failed test, attach the platform units' journal of the test's host to the report."""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    host = getattr(item, "funcargs", {}).get("host")
    if report.when != "call" or not report.failed or host is None:
        return
    failed = host.run("systemctl list-units --failed --no-legend --plain 'dagster-*' 'postgresql*'").stdout
    journal = host.run("journalctl --no-pager -n 150 -o short-iso -u 'dagster-*' -u 'postgresql*'").stdout
    report.sections.append((f"journal of {host.backend.host}", f"failed units:\n{failed}\n{journal}"))
