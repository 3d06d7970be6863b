#!/usr/bin/python
"""Build a venv from a uv project's lock file: the one way every role of the platform
builds a venv (code locations, control plane, exporter, pgAdmin)."""

from __future__ import annotations

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
    if module.check_mode:
        if not (os.access(params["uv"], os.X_OK) and os.path.isfile(os.path.join(params["project_dir"], "uv.lock"))):
            module.exit_json(changed=True, stderr="", msg="uv or the project is not installed yet: it would be built")
        command.append("--dry-run")
    rc, stdout, stderr = module.run_command(command, cwd=params["project_dir"],
                                            environ_update={"UV_PROJECT_ENVIRONMENT": params["venv_dir"]})
    if rc != 0:
        module.fail_json(msg=f"uv sync failed in {params['project_dir']} (exit {rc})", rc=rc, cmd=command,
                         stdout=stdout, stderr=stderr)
    module.exit_json(changed=bool(CHANGES.search(stderr)), cmd=command, stdout=stdout, stderr=stderr)


if __name__ == "__main__":
    main()
