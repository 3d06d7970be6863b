#!/usr/bin/env python3
"""Every shipped uv.lock is current (`uv lock --check`) and resolved for the Python of
each supported Debian release, so a venv builds from it on any of them."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

PYTHONS = {"Debian 12": "3.11", "Debian 13": "3.13"}
ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".cache", "node_modules", "artifacts"}

failures = []
locks = sorted(p for p in ROOT.rglob("uv.lock") if not SKIP & set(p.relative_to(ROOT).parts))
for lock in locks:
    where = lock.relative_to(ROOT)
    requires = SpecifierSet(tomllib.loads(lock.read_text())["requires-python"])
    for release, python in PYTHONS.items():
        if python not in requires:
            failures.append(f"{where}: requires-python {requires} leaves out Python {python} ({release})")
    check = subprocess.run(["uv", "lock", "--check", "--offline", "--quiet"], cwd=lock.parent,
                           capture_output=True, text=True)
    if check.returncode != 0:
        failures.append(f"{where}: out of date with its pyproject.toml, run `uv lock` there: {check.stderr.strip()}")
print(f"{len(locks)} lock files checked for Python {', '.join(PYTHONS.values())}")
if failures:
    sys.exit("\n".join(failures))
