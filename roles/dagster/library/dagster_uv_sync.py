#!/usr/bin/python
"""Build a venv from a uv project's lock file: the one way every role of the platform
builds a venv (code locations, control plane, exporter, pgAdmin)."""

from __future__ import annotations

import hashlib
import os
import re

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dagster_uv_sync
short_description: Build a venv from a uv project's lock file (uv sync --frozen --no-dev)
description:
  - Runs C(uv sync --frozen --no-dev --compile-bytecode) in I(project_dir) with
    C(UV_PROJECT_ENVIRONMENT=venv_dir). Changed when uv installed, removed or created anything.
  - In check mode runs it with C(--dry-run); a project or uv that is not there yet (a fresh
    host) is reported as a change, not a failure.
  - After a sync it writes a stamp in the venv (C(.dagster-uv-sync)): the digest of
    pyproject.toml, uv.lock, the uv binary, UV_PYTHON and the uv command line (removed
    before each sync, so a failed one leaves none). While the stamp matches and the
    venv's python is there, uv is not run (it costs 0.2-0.4 s to find nothing to do).
    Deleting the stamp, or the venv, makes the next run sync again.
options:
  uv:
    description: The uv binary.
    type: path
    required: true
  project_dir:
    description: The folder holding pyproject.toml and uv.lock.
    type: path
    required: true
  venv_dir:
    description: The venv to build or update.
    type: path
    required: true
notes:
  - The rest of uv's settings (index, cache, python) come from the task's C(environment),
    which keeps an index URL with credentials out of the module's logged arguments.
"""

RETURN = r"""
stderr:
  description: What uv reported (the packages it installed or removed).
  type: str
  returned: always
"""

# uv's summary lines when it changed (or, with --dry-run, would change) the venv.
CHANGES = re.compile(r"^(Installed|Uninstalled|Would install|Would uninstall|Would create|Creating virtual)",
                     re.MULTILINE)


STAMP = ".dagster-uv-sync"


def inputs_digest(uv: str, project_dir: str, command: list[str]) -> str | None:
    """What the venv is built from, and how; None when some of it is missing."""
    digest = hashlib.sha256(" ".join(command).encode() + b"\0")
    try:
        for name in ("pyproject.toml", "uv.lock"):
            with open(os.path.join(project_dir, name), "rb") as source:
                digest.update(name.encode() + b"\0" + source.read() + b"\0")
        binary = os.stat(uv)
    except OSError:
        return None
    digest.update(f"uv {binary.st_size} {binary.st_mtime_ns}\0".encode())
    digest.update(f"UV_PYTHON={os.environ.get('UV_PYTHON', '')}".encode())
    return digest.hexdigest()


def stamp_matches(venv_dir: str, digest: str | None) -> bool:
    try:
        with open(os.path.join(venv_dir, STAMP)) as stamp:
            recorded = stamp.read().strip()
    except OSError:
        return False
    return digest is not None and recorded == digest and os.path.exists(os.path.join(venv_dir, "bin", "python"))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "uv": {"type": "path", "required": True},
            "project_dir": {"type": "path", "required": True},
            "venv_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    command = [params["uv"], "sync", "--frozen", "--no-dev", "--compile-bytecode"]
    digest = inputs_digest(params["uv"], params["project_dir"], command)
    if stamp_matches(params["venv_dir"], digest):
        module.exit_json(changed=False, stderr="", msg="the venv's stamp matches its lock file: nothing to sync")
    stamp = os.path.join(params["venv_dir"], STAMP)
    if not module.check_mode:
        try:
            os.unlink(stamp)  # a sync that fails half-way must not leave a stamp that matches later
        except FileNotFoundError:
            pass
    if module.check_mode:
        if not (os.access(params["uv"], os.X_OK) and os.path.isfile(os.path.join(params["project_dir"], "uv.lock"))):
            module.exit_json(changed=True, stderr="", msg="uv or the project is not installed yet: it would be built")
        command.append("--dry-run")
    rc, stdout, stderr = module.run_command(command, cwd=params["project_dir"],
                                            environ_update={"UV_PROJECT_ENVIRONMENT": params["venv_dir"]})
    if rc != 0:
        module.fail_json(msg=f"uv sync failed in {params['project_dir']} (exit {rc})", rc=rc, cmd=command,
                         stdout=stdout, stderr=stderr)
    if not module.check_mode and digest is not None:
        with open(stamp + ".tmp", "w") as out:
            out.write(digest + "\n")
        os.replace(stamp + ".tmp", stamp)
    module.exit_json(changed=bool(CHANGES.search(stderr)), cmd=command, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    main()
