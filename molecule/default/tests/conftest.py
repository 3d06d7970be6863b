import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))

from dagster_platform import web  # noqa: E402,F401
from journal_on_failure import pytest_runtest_makereport  # noqa: E402,F401
