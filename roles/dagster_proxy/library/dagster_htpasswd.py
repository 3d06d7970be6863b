#!/usr/bin/python3
"""Ansible module: an htpasswd file holding exactly the given logins."""

DOCUMENTATION = r"""
module: dagster_htpasswd
short_description: An htpasswd file that holds exactly the given logins, hashed with sha512-crypt.
description:
  - Writes one line per login, in the given order, and nothing else: a login that is no
    longer listed is removed. A line whose hash already matches its password, with the
    wanted rounds, is kept as it is (same salt), so an unchanged list changes nothing.
  - Needs passlib on the host (python3-passlib).
options:
  path:
    description: The htpasswd file.
    type: path
    required: true
  users:
    description: The logins, each {name, password}.
    type: list
    elements: dict
    required: true
  rounds:
    description: sha512-crypt rounds; nginx computes the hash on every request.
    type: int
    default: 5000
extends_documentation_fragment: [files]
"""

RETURN = r"""
users:
  description: The login names the file holds.
  type: list
  returned: always
rehashed:
  description: Logins whose line was written anew (new login, new password, other rounds).
  type: list
  returned: always
removed:
  description: Logins removed because they are no longer listed.
  type: list
  returned: always
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {"type": "list", "elements": "dict", "required": True, "no_log": True},
            "rounds": {"type": "int", "default": 5000},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    try:
        from passlib.hash import sha512_crypt
    except ImportError:
        module.fail_json(msg="dagster_htpasswd needs passlib on the host (apt install python3-passlib)")

    path, rounds = module.params["path"], module.params["rounds"]
    current = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    old = {}
    for line in (current or "").splitlines():
        name, sep, hashed = line.partition(":")
        if sep:
            old[name] = hashed

    lines, rehashed = [], []
    for user in module.params["users"]:
        name, password = user["name"], user["password"]
        hashed = old.get(name, "")
        try:
            keep = sha512_crypt.from_string(hashed).rounds == rounds and sha512_crypt.verify(password, hashed)
        except ValueError:  # not a sha512-crypt hash (another scheme, or no line yet)
            keep = False
        if not keep:
            hashed = sha512_crypt.using(rounds=rounds).hash(password)
            rehashed.append(name)
        lines.append(f"{name}:{hashed}\n")
    names = [user["name"] for user in module.params["users"]]
    removed = [name for name in old if name not in names]
    content = "".join(lines)
    changed = content != current
    if changed and not module.check_mode:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".htpasswd.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        module.atomic_move(tmp, path)
    file_args = module.load_file_common_arguments(module.params)
    if os.path.exists(path):
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, users=names, rehashed=rehashed, removed=removed)


if __name__ == "__main__":
    main()
